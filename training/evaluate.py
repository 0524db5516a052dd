"""Next-item evaluation: every click of every test session predicts the one after it.

Protocol (the GRU4Rec / SR-GNN one): sessions start from a zero hidden state; each prediction ranks
the true next item against the whole catalogue; rank = number of items scoring >= the target
(conservative: a tie never helps the model); Recall@K = share of predictions with rank <= K,
MRR@K = mean of 1/rank over them (0 beyond K). Clicks on items unseen in training are dropped from
the test sessions beforehand and counted (`Sessions.n_dropped_clicks`). Models that read the whole
prefix (NARM) see the session's clicks so far, at most its last L, for each prediction instead of a
hidden state carried from click to click: the predictions are the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from training.data import Sessions
from training.prefixes import Prefixes
from training.session_batches import apply_resets, session_parallel_steps

CUTOFFS = (5, 10, 20)


@dataclass
class RankingMetrics:
    name: str
    recall: dict[int, float] = field(default_factory=dict)
    mrr: dict[int, float] = field(default_factory=dict)
    n_predictions: int = 0
    n_dropped_clicks: int = 0

    @classmethod
    def from_ranks(cls, name: str, ranks: np.ndarray, n_dropped_clicks: int,
                   cutoffs: tuple[int, ...] = CUTOFFS) -> "RankingMetrics":
        metrics = cls(name=name, n_predictions=len(ranks), n_dropped_clicks=n_dropped_clicks)
        for k in cutoffs:
            hit = ranks <= k
            metrics.recall[k] = float(hit.mean()) if len(ranks) else 0.0
            metrics.mrr[k] = float(np.where(hit, 1.0 / ranks, 0.0).mean()) if len(ranks) else 0.0
        return metrics

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "n_predictions": self.n_predictions,
            "n_dropped_clicks": self.n_dropped_clicks,
            **{f"recall@{k}": v for k, v in self.recall.items()},
            **{f"mrr@{k}": v for k, v in self.mrr.items()},
        }


def conservative_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row, the number of items scoring at least as high as the target: a tie never helps."""
    return (scores >= scores.gather(1, targets.unsqueeze(1))).sum(dim=1)


@torch.no_grad()
def model_ranks(model: torch.nn.Module, sessions: Sessions, batch_size: int = 512) -> np.ndarray:
    """Conservative rank of every next click; `model(items, hidden)` gives full-catalogue scores."""
    model.eval()
    hidden = model.initial_hidden(min(batch_size, sessions.n_sessions))
    ranks = []
    for step in session_parallel_steps(sessions, batch_size):
        hidden = apply_resets(hidden, step)
        scores, hidden = model(step.items, hidden)
        ranks.append(conservative_ranks(scores, step.targets))
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def prefix_model_ranks(score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sessions: Sessions,
                       max_len: int, batch_size: int = 512) -> np.ndarray:
    """Conservative rank of every next click for models that read the whole prefix (NARM): each click is
    predicted from the session's clicks before it (its last `max_len`), `score_fn(items [B, L] padded after
    the clicks, lengths [B])` gives full-catalogue scores. Same predictions, same order as `popularity_ranks`."""
    if isinstance(score_fn, torch.nn.Module):
        score_fn.eval()
    ranks = []
    for batch in Prefixes.of(sessions, max_len).batches(batch_size):
        ranks.append(conservative_ranks(score_fn(batch.items, batch.lengths), batch.targets))
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def popularity_ranks(popularity: np.ndarray, sessions: Sessions) -> np.ndarray:
    """Rank of every next click when every session gets the training popularity ranking."""
    is_target = np.ones(sessions.n_clicks, dtype=bool)
    is_target[sessions.offsets[:-1]] = False  # every click but a session's first is predicted
    targets = sessions.items[is_target]
    sorted_popularity = np.sort(popularity)
    return len(popularity) - np.searchsorted(sorted_popularity, popularity[targets], side="left")


def with_popularity_baseline(name: str, ranks: np.ndarray, popularity: np.ndarray,
                             sessions: Sessions) -> tuple[RankingMetrics, RankingMetrics]:
    """A model's metrics from its ranks, and the popularity baseline's on the same predictions."""
    baseline = popularity_ranks(popularity, sessions)
    if len(ranks) != len(baseline):
        raise AssertionError(f"model made {len(ranks)} predictions, the protocol expects {len(baseline)}")
    return (RankingMetrics.from_ranks(name, ranks, sessions.n_dropped_clicks),
            RankingMetrics.from_ranks("popularity", baseline, sessions.n_dropped_clicks))


def evaluate(model: torch.nn.Module, popularity: np.ndarray, sessions: Sessions, name: str,
             batch_size: int = 512) -> tuple[RankingMetrics, RankingMetrics]:
    """Metrics of a step model (GRU4Rec) and of the popularity baseline."""
    return with_popularity_baseline(name, model_ranks(model, sessions, batch_size), popularity, sessions)


def evaluate_prefix_model(score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], popularity: np.ndarray,
                          sessions: Sessions, name: str, max_len: int,
                          batch_size: int = 512) -> tuple[RankingMetrics, RankingMetrics]:
    """Metrics of a prefix model (NARM, `prefix_model_ranks`) and of the popularity baseline."""
    return with_popularity_baseline(name, prefix_model_ranks(score_fn, sessions, max_len, batch_size),
                                    popularity, sessions)


def format_table(rows: list[RankingMetrics], cutoffs: tuple[int, ...] = CUTOFFS) -> str:
    header = ["model"] + [f"Recall@{k}" for k in cutoffs] + [f"MRR@{k}" for k in cutoffs] + ["predictions"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for row in rows:
        cells = [row.name] + [f"{row.recall[k]:.4f}" for k in cutoffs] + [f"{row.mrr[k]:.4f}" for k in cutoffs]
        lines.append(" | ".join(cells + [f"{row.n_predictions:,}"]))
    return "\n".join(lines)
