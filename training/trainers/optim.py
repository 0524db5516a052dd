"""Adagrad with momentum, the optimiser of the official GRU4Rec (IndexedAdagradM).

For every parameter θ with gradient g:

    a ← a + g²                      (accumulated squared gradient)
    m ← μ·m − η · g / sqrt(a + ε)   (momentum)
    θ ← θ + m

Item tables (W_y, b_y, E) have one row per item, and a step touches only a few thousand of them:
`step_rows` applies the same update to those rows alone, leaving every other row's parameters,
accumulators and momentum untouched, as the official sparse update does.
"""

from __future__ import annotations

import torch
from torch import nn


class AdagradMomentum:
    def __init__(self, dense: list[nn.Parameter], tables: list[nn.Parameter], lr: float = 0.05,
                 momentum: float = 0.0, eps: float = 1e-6):
        self.lr, self.momentum, self.eps = lr, momentum, eps
        self.dense, self.tables = dense, tables
        self._dense_acc = [torch.zeros_like(p) for p in dense]
        self._dense_mom = [torch.zeros_like(p) for p in dense]
        self._table_acc = {id(t): torch.zeros_like(t) for t in tables}
        self._table_mom = {id(t): torch.zeros_like(t) for t in tables}

    @torch.no_grad()
    def step_dense(self) -> None:
        params = [p for p in self.dense if p.grad is not None]
        if not params:
            return
        index = [i for i, p in enumerate(self.dense) if p.grad is not None]
        grads = [p.grad for p in params]
        acc = [self._dense_acc[i] for i in index]
        mom = [self._dense_mom[i] for i in index]
        torch._foreach_addcmul_(acc, grads, grads)
        denom = torch._foreach_add(acc, self.eps)
        torch._foreach_sqrt_(denom)
        torch._foreach_mul_(mom, self.momentum)
        torch._foreach_addcdiv_(mom, grads, denom, value=-self.lr)
        torch._foreach_add_(params, mom)

    @torch.no_grad()
    def step_rows(self, table: nn.Parameter, ids: torch.Tensor, grad: torch.Tensor) -> None:
        """Update rows `ids` (unique) of `table`, whose gradient rows are `grad`. Rows are read with
        index_select and added with index_add_: several times faster on CPU than advanced indexing."""
        accumulated, momentum = self._table_acc[id(table)], self._table_mom[id(table)]
        accumulated.index_add_(0, ids, grad * grad)
        denom = accumulated.index_select(0, ids).add_(self.eps).sqrt_()
        step = momentum.index_select(0, ids).mul_(self.momentum).addcdiv_(grad, denom, value=-self.lr)
        momentum.index_copy_(0, ids, step)
        table.index_add_(0, ids, step)

    def accumulators(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, its accumulated squared gradient a): the dense weights, then the item tables."""
        return [*zip(self.dense, self._dense_acc), *((t, self._table_acc[id(t)]) for t in self.tables)]

    def zero_grad(self) -> None:
        for p in self.dense:
            p.grad = None
