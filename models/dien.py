"""DIEN: how a session's interest evolves towards one candidate item; nextclick's second-stage re-ranker.

Zhou, Mou, Fan, Pi, Bian, Zhou, Zhu & Gai, "Deep Interest Evolution Network for Click-Through Rate
Prediction" (AAAI 2019). DIEN scores one target item given a click history; here the targets are the
top-N candidates a retriever (GRU4Rec or NARM) found, and the history is the session's last L clicks.

Every item is embedded as e = [E_item[i] ; E_category[cat(i)]] (the category part only when the data
has categories), D wide. For a history x_1..x_T and a candidate a:

    interest extractor     h_t = GRU(e_{x_t}, h_{t-1})                           h_0 = 0, h_t ∈ R^D
    auxiliary loss         L_aux = −Σ_{t<T} [log σ(h_t·e_{x_{t+1}}) + log(1 − σ(h_t·e_{x̂_{t+1}}))]
                           x̂ a popularity-sampled item the session did not click next
    target attention       a_t = exp(h_t W e_a) / Σ_j exp(h_j W e_a)              W [D, D], over real clicks
    interest evolution     AUGRU:  u_t = σ(W_u h_t + U_u h'_{t-1} + b_u)
                                   r_t = σ(W_r h_t + U_r h'_{t-1} + b_r)
                                   h̃_t = tanh(W_h h_t + r_t ∘ (U_h h'_{t-1}) + b_h)
                                   ũ_t = a_t · u_t
                                   h'_t = (1 − ũ_t) ∘ h'_{t-1} + ũ_t ∘ h̃_t           h'_0 = 0
    output                 s_a = MLP([e_a ; Σ_t e_{x_t} ; e_a ∘ Σ_t e_{x_t} ; h'_T])   200 → 80 → 1, Dice or PReLU

s_a is a logit: σ(s_a) is the click probability of the paper's CTR setting.

Padding: histories are left-aligned and padded after their clicks (like NARM's). Padding never enters a
real state: the extractor looks only backwards, padding gets no attention (a_t = 0 there), and with
ũ_t = 0 the AUGRU carries h'_t unchanged through it, so h'_T is the state after the last real click. The
AUGRU is written out step by step (no fused kernel exists for it); the serving graph runs it over each
history's real clicks only (`models.export.DIENServing`), and takes histories padded to the batch's longest.

Where this departs from the paper or its official code (mouna99/dien), and why:
- the auxiliary score is the paper's inner product σ(h_t·e) (the official code uses a small MLP), so the
  extractor's width is D, the embedding's, as in the paper's experiments;
- no user-profile or context features: sessions are anonymous; the MLP input is the official one without
  the user embedding;
- the rest (GRU/AUGRU equations, attention form, [e_a, Σe, e_a∘Σe, h'_T] input, Dice) is the paper's;
- `DIENEnsemble` (optional, not in the paper) averages the logits of DIENs trained from different seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DIENConfig:
    n_items: int
    n_categories: int = 0  # 0: items are embedded by id alone
    item_dim: int = 32
    category_dim: int = 16
    max_len: int = 19  # L: histories are the session's last L clicks
    mlp: tuple[int, ...] = (200, 80)
    activation: str = "dice"  # "dice" (the paper's) or "prelu"

    def __post_init__(self) -> None:
        if self.activation not in ("dice", "prelu"):
            raise ValueError(f"activation must be 'dice' or 'prelu', got {self.activation!r}")
        if self.max_len < 1:
            raise ValueError("max_len must be at least 1")

    @property
    def embedding_dim(self) -> int:
        return self.item_dim + (self.category_dim if self.n_categories else 0)


class Dice(nn.Module):
    """Data-adaptive activation (DIN, Zhou et al. 2018): p(s) = σ((s − E[s]) / √(Var[s] + ε)),
    f(s) = p(s)·s + (1 − p(s))·α·s. E and Var are the batch's while training (every row of every candidate)
    and their running averages (momentum 0.1, as batch norm's) after."""

    momentum = 0.1
    eps = 1e-8

    def __init__(self, units: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(units))
        self.register_buffer("running_mean", torch.zeros(units))
        self.register_buffer("running_var", torch.ones(units))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.training:
            rows = s.reshape(-1, s.shape[-1])
            mean, var = rows.mean(dim=0), rows.var(dim=0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((s - mean) / torch.sqrt(var + self.eps))
        return p * s + (1 - p) * self.alpha * s


class PReLU(nn.Module):
    """f(s) = s for s > 0, α·s otherwise, one α per unit (the last dimension, unlike torch's nn.PReLU).

    Written as relu(s) − α·relu(−s), which is that value exactly: the select form becomes an ONNX Where, which
    onnxruntime runs several times slower than the matrix product before it."""

    def __init__(self, units: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((units,), 0.25))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.relu(s) - self.alpha * torch.relu(-s)


def augru_step(projected: torch.Tensor, hidden: torch.Tensor, attention: torch.Tensor,
               hidden_weight: torch.Tensor) -> torch.Tensor:
    """One AUGRU step: `projected` [B, 1, 3D] (the click's input projections), `hidden` h'_{t-1} [B, N, D],
    `attention` a_t [B, N, 1], U = `hidden_weight` [3D, D] → h'_t [B, N, D]. A plain function, so that the
    serving graph's scripted loop (`models.export.DIENServing`) runs the same step."""
    x_u, x_r, x_h = projected.chunk(3, dim=-1)
    h_u, h_r, h_h = F.linear(hidden, hidden_weight).chunk(3, dim=-1)
    update = torch.sigmoid(x_u + h_u)
    reset = torch.sigmoid(x_r + h_r)
    candidate = torch.tanh(x_h + reset * h_h)
    update = attention * update
    return (1 - update) * hidden + update * candidate


def augru_first_step(projected: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """`augru_step` from h'_0 = 0, without the product with U (U·0 = 0): h'_1 = a_1·σ(x_u) ∘ tanh(x_h), the
    reset gate having nothing to reset. The serving graph's loop starts with it (`models.export.evolve`)."""
    x_u, _, x_h = projected.chunk(3, dim=-1)
    return attention * torch.sigmoid(x_u) * torch.tanh(x_h)


class AUGRUCell(nn.Module):
    """One AUGRU step. The input projections do not depend on the candidate, so they are computed once per
    history (`project`) and shared by every candidate's recurrence."""

    def __init__(self, size: int):
        super().__init__()
        self.input_gates = nn.Linear(size, 3 * size)  # W_u, W_r, W_h and the biases
        self.hidden_gates = nn.Linear(size, 3 * size, bias=False)  # U_u, U_r, U_h

    def project(self, states: torch.Tensor) -> torch.Tensor:
        return self.input_gates(states)

    def forward(self, projected: torch.Tensor, hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """projected [B, 1, 3D] (one click), hidden [B, N, D], attention [B, N, 1] → next hidden [B, N, D]."""
        return augru_step(projected, hidden, attention, self.hidden_gates.weight)


class DIEN(nn.Module):
    def __init__(self, config: DIENConfig, item_categories: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.item_embedding = nn.Embedding(config.n_items, config.item_dim)
        self.category_embedding = None
        if config.n_categories:
            if item_categories is None or item_categories.shape != (config.n_items,):
                raise ValueError(f"n_categories={config.n_categories} needs item_categories [{config.n_items}]")
            self.category_embedding = nn.Embedding(config.n_categories, config.category_dim)
            self.register_buffer("item_categories", item_categories.to(torch.int64))
        self.extractor = nn.GRU(d, d, batch_first=True)
        self.attention = nn.Linear(d, d, bias=False)  # W
        self.evolution = AUGRUCell(d)
        layers: list[nn.Module] = []
        width = 4 * d
        for units in config.mlp:
            layers += [nn.Linear(width, units), Dice(units) if config.activation == "dice" else PReLU(units)]
            width = units
        layers.append(nn.Linear(width, 1))
        self.output = nn.Sequential(*layers)
        # the last layer starts at zero: a re-ranker added to a retriever's scores starts as the identity
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)
        # w in the two-stage score w·s_retriever + s_a (`training.trainers.dien`, residual mode): a retriever's
        # scores come on no particular scale, so their weight is learnt with the rest; not in the paper
        self.prior_weight = nn.Parameter(torch.ones(()))

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        if self.category_embedding is None:
            return self.item_embedding(items)
        return torch.cat([self.item_embedding(items), self.category_embedding(self.item_categories[items])], dim=-1)

    def extract(self, history: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded clicks [B, L, D], interest states h [B, L, D] and the mask of real clicks [B, L]."""
        mask = torch.arange(history.shape[1], device=history.device).unsqueeze(0) < lengths.unsqueeze(1)
        embedded = self.embed(history.masked_fill(~mask, 0))
        # h_0 explicit, shaped from the input: the exported graph keeps its batch size dynamic
        states, _ = self.extractor(embedded, embedded.new_zeros(1, embedded.shape[0], embedded.shape[2]))
        return embedded, states, mask

    def forward(self, history: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Logits [B, N] of candidates [B, N] for histories [B, L] padded after lengths [B] (>= 1) clicks."""
        embedded, states, mask = self.extract(history, lengths)
        return self.score(embedded, states, mask, self.embed(candidates))

    def score(self, embedded: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
              target: torch.Tensor) -> torch.Tensor:
        """Logits [B, N] of the embedded candidates `target` [B, N, D] given one extraction of the histories."""
        attention = self.attend(states, mask, target)
        projected = self.evolution.project(states)  # [B, L, 3D], shared by every candidate
        evolved = target.new_zeros(target.shape)  # h'_0, [B, N, D]
        for t in range(states.shape[1]):
            evolved = self.evolution(projected[:, t : t + 1], evolved, attention[:, :, t : t + 1])
        return self.head(embedded, mask, target, evolved)

    def attend(self, states: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """a_t [B, N, L]: each candidate's attention over the interest states, zero at padding."""
        logits = torch.einsum("bld,bnd->bnl", self.attention(states), target)  # h_t W e_a
        return torch.softmax(logits.masked_fill(~mask.unsqueeze(1), float("-inf")), dim=-1)

    def head(self, embedded: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
             evolved: torch.Tensor) -> torch.Tensor:
        """The output MLP's logits [B, N] over [e_a ; Σ_t e_{x_t} ; e_a ∘ Σ_t e_{x_t} ; h'_T]. Its first layer is
        applied block by block, which is the same sum, with the two candidate blocks folded into one matrix per
        session: e_a W_a + (e_a ∘ Σe) W_p = e_a (W_a + diag(Σe) W_p). So a candidate costs one product with a [D, units]
        matrix instead of two (and serving needs no per-item table), and the history sum's block is taken once per
        session."""
        first = self.output[0]
        w_target, w_sum, w_product, w_evolved = first.weight.split(self.config.embedding_dim, dim=1)
        history_sum = (embedded * mask.unsqueeze(2)).sum(dim=1, keepdim=True)  # [B, 1, D]
        candidate_weights = w_target.t() + history_sum.transpose(1, 2) * w_product.t()  # [B, D, units]
        hidden = (torch.matmul(target, candidate_weights) + F.linear(history_sum, w_sum, first.bias)
                  + F.linear(evolved, w_evolved))
        return self.output[1:](hidden).squeeze(-1)

    def auxiliary_loss(self, embedded: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
                       negatives: torch.Tensor) -> torch.Tensor:
        """L_aux summed over every t with a real click t+1: h_t must score the next click above
        `negatives` [B, L] (entry t: a sampled item standing in for click t+1)."""
        follows = mask[:, 1:]  # click t+1 exists
        positive = (states[:, :-1] * embedded[:, 1:]).sum(-1)
        negative = (states[:, :-1] * self.embed(negatives[:, 1:])).sum(-1)
        loss = F.softplus(-positive) + F.softplus(negative)  # −log σ(pos) − log(1 − σ(neg))
        return (loss * follows).sum()


class DIENEnsemble(nn.Module):
    """DIENs trained alike from different seeds, their logits averaged: one graph with the members' forward
    signature, n times a member's cost. Averaging independently trained re-rankers evens out what each one
    learnt from its own draw of negatives and batches; in the residual two-stage score the averaged
    mean_m(w_m·s + s_m) is mean(w)·s + mean(s_m), so the ensemble's prior weight is the members' mean."""

    def __init__(self, members: list[DIEN]):
        super().__init__()
        if not members or len({m.config for m in members}) != 1:
            raise ValueError("an ensemble needs one or more DIENs of one config")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    @property
    def prior_weight(self) -> torch.Tensor:
        return torch.stack([m.prior_weight for m in self.members]).mean()

    def forward(self, history: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(history, lengths, candidates) for m in self.members]).mean(dim=0)
