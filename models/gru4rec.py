"""GRU4Rec: a session's clicks through a GRU, the next item scored against its final state.

Hidasi et al., "Session-based recommendations with recurrent neural networks" (ICLR 2016), and
Hidasi & Karatzoglou, "Recurrent neural networks with top-k gains" (CIKM 2018); this module follows
the official PyTorch implementation (hidasib/GRU4Rec_PyTorch_Official) wherever the two differ.

One step of a session, for the clicked item x_t:

    e_t = E[x_t]                      constrained embedding: E is W_y itself (input = output weights)
    h_t = GRU_l(dropout_e(e_t), h_{t-1})   for each layer l, each layer's output dropped out with p_h
    r_t = W_y · h_t + b_y             a score for every item (or only for the sampled candidates)

Faithful details that third-party ports often get wrong:
- the hidden dropout mask is applied to each layer's output and the dropped-out vector is what the
  next layer and the next step see, exactly as the official code does;
- weights start as uniform(-s, s) with s = sqrt(6 / (fan_in + fan_out)) per gate block (the
  official code's default "compatibility mode"), biases at zero;
- no softmax or activation sits between the scores and the loss: the losses own that choice.

Training touches only a few rows of W_y, b_y and E per step (the batch's items and the sampled
negatives). `gather_rows` exposes them as small dense leaves, so the optimiser updates those rows
alone without sparse-gradient bookkeeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GRU4RecConfig:
    n_items: int
    layers: tuple[int, ...] = (100,)
    embedding: int = 0  # size of a separate input embedding; 0 with constrained_embedding=False is not supported
    constrained_embedding: bool = True
    dropout_embed: float = 0.0
    dropout_hidden: float = 0.0

    def __post_init__(self) -> None:
        if not self.constrained_embedding and self.embedding <= 0:
            raise ValueError("a separate input embedding needs embedding > 0 (or use constrained_embedding)")
        if not self.layers:
            raise ValueError("GRU4Rec needs at least one GRU layer")


def _glorot_uniform_(tensor: torch.Tensor, fan_in: int, fan_out: int) -> None:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(tensor, -bound, bound)


def _float32(t: torch.Tensor) -> torch.Tensor:
    """A bfloat16 product (autocast) back to float32; no cast at all otherwise, so none enters the
    exported serving graph."""
    return t if t.dtype == torch.float32 else t.float()


@dataclass
class ItemRows:
    """The rows of the item tables one training step reads, as dense leaves that collect gradients."""

    ids: torch.Tensor  # unique item indices, sorted
    output_weights: torch.Tensor  # W_y[ids]
    output_bias: torch.Tensor  # b_y[ids]
    input_embedding: torch.Tensor | None  # E[ids] when the input embedding is separate
    position: dict[str, torch.Tensor] = field(default_factory=dict)  # where each request sits in `ids`

    def mask(self, request: str) -> torch.Tensor:
        """Which of `ids` the request (`items` or `candidates`) used."""
        used = torch.zeros(len(self.ids), dtype=torch.bool, device=self.ids.device)
        used[self.position[request]] = True
        return used


class GRU4Rec(nn.Module):
    def __init__(self, config: GRU4RecConfig):
        super().__init__()
        self.config = config
        layers = config.layers
        n_input = layers[-1] if config.constrained_embedding else config.embedding
        self.input_embedding = (None if config.constrained_embedding
                                else nn.Parameter(torch.empty(config.n_items, n_input)))
        self.grus = nn.ModuleList(
            nn.GRUCell(layers[i - 1] if i > 0 else n_input, size) for i, size in enumerate(layers)
        )
        self.output_weights = nn.Parameter(torch.empty(config.n_items, layers[-1]))  # W_y
        self.output_bias = nn.Parameter(torch.zeros(config.n_items, 1))  # b_y
        self.dropout_embed = nn.Dropout(config.dropout_embed)
        self.dropout_hidden = nn.Dropout(config.dropout_hidden)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        n_items = self.config.n_items
        if self.input_embedding is not None:
            _glorot_uniform_(self.input_embedding, n_items, self.input_embedding.shape[1])
        for gru in self.grus:
            for weight, fan_in in ((gru.weight_ih, gru.input_size), (gru.weight_hh, gru.hidden_size)):
                for gate in weight.chunk(3, dim=0):
                    _glorot_uniform_(gate, fan_in, gru.hidden_size)
            nn.init.zeros_(gru.bias_ih)
            nn.init.zeros_(gru.bias_hh)
        _glorot_uniform_(self.output_weights, n_items, self.output_weights.shape[1])
        nn.init.zeros_(self.output_bias)

    @property
    def n_layers(self) -> int:
        return len(self.grus)

    @property
    def hidden_size(self) -> int:
        return self.config.layers[-1]

    def initial_hidden(self, batch_size: int) -> list[torch.Tensor]:
        return [torch.zeros(batch_size, size, device=self.output_weights.device) for size in self.config.layers]

    # -- one step ---------------------------------------------------------------------------------
    @staticmethod
    def gru_step(gru: nn.GRUCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """nn.GRUCell's update, written out so that under autocast its two projections run in bfloat16 while
        the gates and the state stay float32 (nn.GRUCell itself would run entirely in float32):

            [r_i, z_i, n_i] = W_ih x + b_ih     [r_h, z_h, n_h] = W_hh h + b_hh
            r = σ(r_i + r_h)    z = σ(z_i + z_h)    n = tanh(n_i + r ∘ n_h)    h' = (1 − z) ∘ n + z ∘ h
        """
        r_i, z_i, n_i = _float32(F.linear(x, gru.weight_ih, gru.bias_ih)).split(gru.hidden_size, dim=1)
        r_h, z_h, n_h = _float32(F.linear(h, gru.weight_hh, gru.bias_hh)).split(gru.hidden_size, dim=1)
        r = torch.sigmoid(r_i + r_h)
        z = torch.sigmoid(z_i + z_h)
        n = torch.tanh(n_i + r * n_h)
        return (1 - z) * n + z * h

    def step(self, embedded: torch.Tensor, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Advance every layer by one click; returns the top layer's output and the new hidden states."""
        x = self.dropout_embed(embedded)
        new_hidden = []
        for gru, h in zip(self.grus, hidden):
            x = self.dropout_hidden(self.gru_step(gru, x, h))
            new_hidden.append(x)
        return x, new_hidden

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        table = self.output_weights if self.input_embedding is None else self.input_embedding
        return table[items]

    def score_all(self, output: torch.Tensor) -> torch.Tensor:
        """Scores of the whole catalogue, [B, n_items]: evaluation and serving."""
        return torch.addmm(self.output_bias.T, output, self.output_weights.T)

    def forward(self, items: torch.Tensor, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full-catalogue scores for the next click of each session, and the new hidden states."""
        output, new_hidden = self.step(self.embed(items), hidden)
        return self.score_all(output), new_hidden

    # -- training on sampled candidates -------------------------------------------------------------
    def gather_rows(self, items: torch.Tensor, candidates: torch.Tensor) -> ItemRows:
        """Copy out the rows of the item tables that one step reads (inputs and candidates)."""
        requests = {"items": items, "candidates": candidates}
        ids, inverse = torch.unique(torch.cat(list(requests.values())), return_inverse=True)
        position = dict(zip(requests, inverse.split([len(t) for t in requests.values()])))
        input_embedding = None
        if self.input_embedding is not None:
            input_embedding = self.input_embedding.detach().index_select(0, ids).requires_grad_()
        return ItemRows(
            ids=ids,
            output_weights=self.output_weights.detach().index_select(0, ids).requires_grad_(),
            output_bias=self.output_bias.detach().index_select(0, ids).requires_grad_(),
            input_embedding=input_embedding,
            position=position,
        )

    def row_updates(self, rows: ItemRows) -> list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]:
        """(table, row ids, their gradient) for every row the step really used; rows gathered for one
        table but unused by another (an input item's output bias) are left alone, as the official
        sparse update leaves them."""
        candidates = rows.mask("candidates")
        if self.input_embedding is None:  # shared table: each gathered row is an input or a candidate
            updates = [(self.output_weights, rows.ids, rows.output_weights.grad)]
        else:
            inputs = rows.mask("items")
            updates = [(self.output_weights, rows.ids[candidates], rows.output_weights.grad[candidates]),
                       (self.input_embedding, rows.ids[inputs], rows.input_embedding.grad[inputs])]
        updates.append((self.output_bias, rows.ids[candidates], rows.output_bias.grad[candidates]))
        return updates

    def score_candidates(
        self, rows: ItemRows, hidden: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Training forward: scores [B, C] of the gathered candidates, and the new hidden states."""
        input_table = rows.output_weights if rows.input_embedding is None else rows.input_embedding
        output, new_hidden = self.step(input_table.index_select(0, rows.position["items"]), hidden)
        # score each distinct item once, then pick the candidates' columns: the GEMM and its gradient
        # scatter then run over the few thousand distinct rows, not over every (repeated) candidate
        distinct_scores = _float32(torch.addmm(rows.output_bias.T, output, rows.output_weights.T))
        return distinct_scores.index_select(1, rows.position["candidates"]), new_hidden
