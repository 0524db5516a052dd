"""The optimiser's state that an incremental update continues from, kept compact in a checkpoint.

A warm start with a fresh optimiser is no warm start: Adagrad's and Adam's first steps move every weight by
about the learning rate whatever its gradient (their squared-gradient statistics start at zero), and NARM's
schedule has decayed its rate by the end of training. So a checkpoint keeps the rate in force and, per
parameter, the squared-gradient statistic (Adagrad's sum; Adam's second moment and step count): whole for the
dense weights, one mean per row for the item tables, whose full statistic would double the checkpoint.
Momentum and Adam's first moment start at zero: they forget within a few steps anyway.

The state is a plain dict (`torch.load(weights_only=True)` reads it back):
    {"kind": "adagrad" | "adam", "lr": float, "squares": {parameter name: tensor}, "steps": {name: float}}
"""

from __future__ import annotations

import torch
from torch import nn


def compact(square: torch.Tensor, item_table: bool) -> torch.Tensor:
    """A parameter's squared-gradient statistic as kept: an item table's as one mean per row."""
    square = square.detach().cpu()
    return square.reshape(len(square), -1).mean(dim=1) if item_table else square.clone()


def expanded(kept: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A kept statistic back in its parameter's shape (a row mean repeated along the row)."""
    kept = kept.to(like.device, like.dtype)
    if kept.shape == like.shape:
        return kept
    return kept.reshape(-1, *([1] * (like.dim() - 1))).expand_as(like).clone()


def adagrad_state(model: nn.Module, accumulators: list[tuple[nn.Parameter, torch.Tensor]], tables: set[int],
                  lr: float) -> dict:
    names = {id(p): name for name, p in model.named_parameters()}
    return {"kind": "adagrad", "lr": lr, "steps": {},
            "squares": {names[id(p)]: compact(a, id(p) in tables) for p, a in accumulators}}


@torch.no_grad()
def load_adagrad_state(model: nn.Module, accumulators: list[tuple[nn.Parameter, torch.Tensor]], state: dict) -> None:
    names = {id(p): name for name, p in model.named_parameters()}
    for p, accumulated in accumulators:
        if (kept := state["squares"].get(names[id(p)])) is not None:
            accumulated.copy_(expanded(kept, accumulated))


def adam_state(model: nn.Module, optimisers: list[torch.optim.Optimizer], tables: set[str]) -> dict:
    squares, steps = {}, {}
    for name, p in model.named_parameters():
        for optimiser in optimisers:
            if (found := optimiser.state.get(p)) and "exp_avg_sq" in found:
                squares[name] = compact(found["exp_avg_sq"], name in tables)
                steps[name] = float(found["step"])
    return {"kind": "adam", "lr": optimisers[0].param_groups[0]["lr"], "squares": squares, "steps": steps}


@torch.no_grad()
def load_adam_state(model: nn.Module, optimisers: list[torch.optim.Optimizer], state: dict) -> None:
    """Adam (or SparseAdam) continuing where `state` left off: its rate, second moments and step counts."""
    by_param = {p: name for name, p in model.named_parameters()}
    for optimiser in optimisers:
        for group in optimiser.param_groups:
            group["lr"] = state["lr"]
            for p in group["params"]:
                name = by_param[p]
                if name not in state["squares"]:
                    continue
                step = state["steps"][name]
                optimiser.state[p] = {
                    "step": int(step) if isinstance(optimiser, torch.optim.SparseAdam) else torch.tensor(step),
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": expanded(state["squares"][name], p),
                }
