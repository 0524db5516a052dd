"""GRU4Rec's ranking losses over sampled candidates.

Every loss takes the score matrix R [B, C] of one session-parallel step. Column j < B holds the
target of row j (so row i's target sits on the diagonal, R[i, i] = r_t) and the other columns are
the negatives of row i: the other rows' targets plus the shared popularity samples. Each returns
the SUM over rows of the per-row loss; the trainer divides by the batch size, as the official code
does, so a short last batch weighs less.

Per row, with r_t the target score, j running over the negatives and s_j = softmax_j(r_j) over the
negatives only (the target never enters its own softmax):

    bpr            -1/|N| Σ_j log σ(r_t − r_j)
    top1            1/|N| Σ_j [σ(r_j − r_t) + σ(r_j²)]
    bpr-max        −log Σ_j s_j σ(r_t − r_j)  +  λ Σ_j s_j r_j²       (scores through ELU first)
    top1-max        Σ_j s_j [σ(r_j − r_t) + σ(r_j²)]                   (scores through ELU first)
    cross-entropy  −log softmax(R − q·log P)_t   over target and negatives; q > 0 is logQ correction,
                   P = popularity for in-batch targets and popularity^α for the extra samples
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

LOSSES = ("bpr", "top1", "bpr-max", "top1-max", "cross-entropy")
EPS = 1e-24


@lru_cache(maxsize=8)
def _diagonal_mask(n_rows: int, n_cols: int, device: torch.device) -> torch.Tensor:
    return torch.eye(n_rows, n_cols, dtype=torch.bool, device=device)


def _target_scores(scores: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(scores).unsqueeze(1)


def _negative_softmax(scores: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(_diagonal_mask(*scores.shape, scores.device), float("-inf")), dim=1)


def _mean_over_negatives(per_pair: torch.Tensor) -> torch.Tensor:
    per_pair = per_pair.masked_fill(_diagonal_mask(*per_pair.shape, per_pair.device), 0.0)
    return per_pair.sum() / (per_pair.shape[1] - 1)


def bpr(scores: torch.Tensor) -> torch.Tensor:
    return _mean_over_negatives(-F.logsigmoid(_target_scores(scores) - scores))


def top1(scores: torch.Tensor) -> torch.Tensor:
    return _mean_over_negatives(torch.sigmoid(scores - _target_scores(scores)) + torch.sigmoid(scores**2))


def bpr_max(scores: torch.Tensor, bpreg: float) -> torch.Tensor:
    weights = _negative_softmax(scores)
    ranking = torch.sum(torch.sigmoid(_target_scores(scores) - scores) * weights, dim=1)
    return torch.sum(-torch.log(ranking + EPS) + bpreg * torch.sum(scores**2 * weights, dim=1))


def top1_max(scores: torch.Tensor) -> torch.Tensor:
    weights = _negative_softmax(scores)
    return torch.sum(weights * (torch.sigmoid(scores - _target_scores(scores)) + torch.sigmoid(scores**2)))


def cross_entropy(scores: torch.Tensor, log_sampling_prob: torch.Tensor | None, logq: float) -> torch.Tensor:
    if logq > 0:
        scores = scores - logq * log_sampling_prob
    return -torch.sum(torch.diagonal(torch.log_softmax(scores, dim=1)))


@dataclass(frozen=True)
class LossConfig:
    name: str = "bpr-max"
    bpreg: float = 0.9  # λ, BPR-max score regulariser
    elu_param: float = 1.0  # ELU before the -max losses; 0 turns it off
    logq: float = 0.0  # logQ correction strength for cross-entropy

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ValueError(f"unknown loss {self.name!r}; choose one of {', '.join(LOSSES)}")


def make_loss(config: LossConfig) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The loss as f(scores, log_sampling_prob) → summed loss."""

    def elu(scores: torch.Tensor) -> torch.Tensor:
        return F.elu(scores, config.elu_param) if config.elu_param > 0 else scores

    return {
        "bpr": lambda s, _: bpr(s),
        "top1": lambda s, _: top1(s),
        "bpr-max": lambda s, _: bpr_max(elu(s), config.bpreg),
        "top1-max": lambda s, _: top1_max(elu(s)),
        "cross-entropy": lambda s, logp: cross_entropy(s, logp, config.logq),
    }[config.name]
