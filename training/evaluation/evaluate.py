"""Next-item evaluation: every click of every test session predicts the one after it.

Protocol (the GRU4Rec / SR-GNN one): sessions start from a zero hidden state; each prediction ranks
the true next item against the whole catalogue; rank = number of items scoring >= the target
(conservative: a tie never helps the model); Recall@K = share of predictions with rank <= K,
MRR@K = mean of 1/rank over them (0 beyond K). Clicks on items unseen in training are dropped from
the test sessions beforehand and counted (`Sessions.n_dropped_clicks`). Models that read the whole
prefix (NARM) see the session's clicks so far, at most its last L, for each prediction instead of a
hidden state carried from click to click: the predictions are the same ones.

A model is scored where its weights are (`training.trainers.device.module_device`): on a GPU the scores, ranks and
top-N are computed there and only the ranks and the top-N come back to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from stream_app.inference.scoring import Scorer
from training.data.click_log import Sessions
from training.data.prefixes import Prefixes
from training.data.session_batches import apply_resets, session_parallel_steps
from training.trainers.device import module_device

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
                   cutoffs: tuple[int, ...] = CUTOFFS) -> RankingMetrics:
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


@dataclass(frozen=True)
class ScoredBatch:
    """Full-catalogue scores for some of the predictions, and where their targets sit in the sessions."""

    positions: np.ndarray  # index of each target in `Sessions.items`: sorting by it gives click order
    scores: torch.Tensor  # [b, n_items]
    targets: torch.Tensor  # [b]


# A model's predictions for every next click of some sessions, in any order.
ScoreBatches = Callable[[Sessions], Iterator[ScoredBatch]]


def step_model_scores(model: torch.nn.Module, batch_size: int = 512) -> ScoreBatches:
    """A step model (GRU4Rec, `model(items, hidden)`): session-parallel, hidden state zero per session."""

    def scored(sessions: Sessions) -> Iterator[ScoredBatch]:
        model.eval()
        hidden = model.initial_hidden(min(batch_size, sessions.n_sessions))
        for step in session_parallel_steps(sessions, batch_size, module_device(model)):
            hidden = apply_resets(hidden, step)
            scores, hidden = model(step.items, hidden)
            yield ScoredBatch(step.positions, scores, step.targets)

    return scored


def prefix_model_scores(score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], max_len: int,
                        batch_size: int = 512) -> ScoreBatches:
    """A model that reads the whole prefix (NARM): `score_fn(items [B, L] padded after the clicks, lengths [B])`
    sees each prediction's clicks so far, its last `max_len`."""

    def scored(sessions: Sessions) -> Iterator[ScoredBatch]:
        if isinstance(score_fn, torch.nn.Module):
            score_fn.eval()
        device = module_device(score_fn)
        for batch in Prefixes.of(sessions, max_len).batches(batch_size):
            batch = batch.to(device)
            yield ScoredBatch(batch.positions, score_fn(batch.items, batch.lengths), batch.targets)

    return scored


@dataclass(frozen=True)
class Retrieval:
    """Every prediction in click order: the target's conservative rank, and the model's best `n` items."""

    ranks: np.ndarray  # int64 [P]
    top: np.ndarray  # int32 [P, n], best first ([P, 0] when n = 0); int32 keeps a training set's top-100 small
    top_scores: np.ndarray  # float32 [P, n]: the model's scores of `top`

    def prior(self, rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The retriever's score of each of `candidates` [b, C] for the predictions `rows` [b]: exact inside
        the top-n; outside it, the n-th score, an upper bound (every top-n item scored at least that)."""
        top, scores = self.top[rows], self.top_scores[rows]
        match = candidates[:, :, None] == top[:, None, :]
        return np.where(match.any(axis=2), np.take_along_axis(scores, match.argmax(axis=2), axis=1),
                        scores[:, -1:]).astype(np.float32)

    def target_columns(self, targets: np.ndarray) -> np.ndarray:
        """Where each prediction's target sits in its top-n, -1 where it is not there."""
        match = self.top == targets[:, None]
        return np.where(match.any(axis=1), match.argmax(axis=1), -1)

    def best(self, n: int) -> Retrieval:
        """The same predictions with only the best `n` items kept."""
        return Retrieval(self.ranks, self.top[:, :n], self.top_scores[:, :n])

    @classmethod
    def concat(cls, parts: list[Retrieval]) -> Retrieval:
        """The predictions of `parts`, one part after another (of sessions joined by `Sessions.concat`)."""
        return cls(np.concatenate([p.ranks for p in parts]), np.concatenate([p.top for p in parts]),
                   np.concatenate([p.top_scores for p in parts]))

    @classmethod
    def in_click_order(cls, positions: list[np.ndarray], ranks: list[np.ndarray], tops: list[np.ndarray],
                       top_scores: list[np.ndarray], n: int) -> Retrieval:
        """Batches gathered in any order (`positions`: each target's index in the sessions' clicks), sorted."""
        if not positions:
            return cls(np.zeros(0, dtype=np.int64), np.zeros((0, n), dtype=np.int32), np.zeros((0, n), np.float32))
        order = np.argsort(np.concatenate(positions), kind="stable")
        return cls(np.concatenate(ranks)[order], np.concatenate(tops)[order].astype(np.int32),
                   np.concatenate(top_scores)[order])


@torch.no_grad()
def retrieve(scores: ScoreBatches, sessions: Sessions, n: int = 0) -> Retrieval:
    positions, ranks, tops, top_scores = [], [], [], []
    for batch in scores(sessions):
        positions.append(batch.positions)
        ranks.append(conservative_ranks(batch.scores, batch.targets).cpu().numpy())
        best = torch.topk(batch.scores, n, dim=1)
        tops.append(best.indices.to(torch.int32).cpu().numpy())
        top_scores.append(best.values.cpu().numpy())
    return Retrieval.in_click_order(positions, ranks, tops, top_scores, n)


def graph_retrieval(scorer: Scorer, sessions: Sessions, batch_size: int = 512) -> Retrieval:
    """A published GRU4Rec serving graph's top-K (`scorer.graph_top_k`) for every prediction, in click order.
    The graph returns only its top K: a target inside gets its conservative rank among them, one outside the
    worst rank (the catalogue's size), its true rank being only known to exceed K. Figures at cut-offs up to
    K are exact, beyond K lower bounds."""
    hidden = scorer.zero_hidden(min(batch_size, sessions.n_sessions))
    positions, ranks, tops, top_scores = [], [], [], []
    for step in session_parallel_steps(sessions, batch_size):
        if step.keep is not None:
            hidden = hidden[:, step.keep.numpy()]
        if step.reset is not None:
            hidden[:, step.reset.numpy()] = 0.0
        result = scorer.step(step.items.numpy(), hidden)
        hidden = result.next_hidden
        targets = step.targets.numpy()[:, None]
        found = result.top_items == targets
        target_score = np.where(found, result.top_scores, np.inf).min(axis=1, keepdims=True)
        ranks.append(np.where(found.any(axis=1), (result.top_scores >= target_score).sum(axis=1),
                              len(scorer.item_ids)))
        positions.append(step.positions)
        tops.append(result.top_items.astype(np.int32))
        top_scores.append(result.top_scores)
    return Retrieval.in_click_order(positions, ranks, tops, top_scores, scorer.graph_top_k)


def model_ranks(model: torch.nn.Module, sessions: Sessions, batch_size: int = 512) -> np.ndarray:
    """Conservative rank of every next click for a step model, in click order."""
    return retrieve(step_model_scores(model, batch_size), sessions).ranks


def prefix_model_ranks(score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sessions: Sessions,
                       max_len: int, batch_size: int = 512) -> np.ndarray:
    """Conservative rank of every next click for a prefix model, in click order."""
    return retrieve(prefix_model_scores(score_fn, max_len, batch_size), sessions).ranks


@torch.no_grad()
def reranked_ranks(reranker: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], max_len: int,
                   sessions: Sessions, retrieval: Retrieval, prior_weight: float | None,
                   batch_size: int = 256) -> np.ndarray:
    """Ranks of the two-stage list: the retriever's top-N re-ordered by `reranker(items, lengths, candidates)`
    (plus `prior_weight` x the retriever's own scores, unless None), then every other item in retrieval order. A target
    inside the top-N gets its conservative rank among the N re-ranked candidates; one outside keeps its
    retrieval rank (already > N: all N scored at least as high). `reranker` sees those predictions only,
    shortest history first."""
    if isinstance(reranker, torch.nn.Module):
        reranker.eval()
    device = module_device(reranker)
    prefixes = Prefixes.of(sessions, max_len)
    if len(prefixes) != len(retrieval.ranks):
        raise ValueError(f"retrieval has {len(retrieval.ranks)} predictions, the sessions {len(prefixes)}")
    ranks = retrieval.ranks.copy()
    columns = retrieval.target_columns(prefixes.targets)
    inside = np.flatnonzero(columns >= 0)  # only these can move
    # shortest histories first: a batch is padded to its longest, and click order pads most to max_len
    inside = inside[np.argsort(prefixes.lengths[inside], kind="stable")]
    for first in range(0, len(inside), batch_size):
        index = inside[first:first + batch_size]
        batch = prefixes.batch(index).to(device)
        candidates = torch.from_numpy(retrieval.top[index].astype(np.int64)).to(device)
        scores = reranker(batch.items, batch.lengths, candidates)
        if prior_weight is not None:
            scores = scores + prior_weight * torch.from_numpy(retrieval.top_scores[index]).to(device)
        ranks[index] = conservative_ranks(scores, torch.from_numpy(columns[index]).to(device)).cpu().numpy()
    return ranks


@torch.no_grad()
def pairwise_auc(scorer: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], max_len: int,
                 sessions: Sessions, popularity: np.ndarray, sample_alpha: float, seed: int = 0,
                 batch_size: int = 512) -> float:
    """AUC of `scorer` over every held-out next click (positive) against one item drawn ∝ popularity^alpha
    (negative; a draw equal to the target is left out): the share of (positive, negative) pairs, over all
    predictions, ordered right, ties counting half (Mann-Whitney, average ranks)."""
    if isinstance(scorer, torch.nn.Module):
        scorer.eval()
    device = module_device(scorer)
    weights = np.asarray(popularity, dtype=np.float64) ** sample_alpha
    rng = np.random.default_rng(seed)
    positives, negatives = [], []
    for batch in Prefixes.of(sessions, max_len).batches(batch_size):
        drawn = torch.from_numpy(rng.choice(len(weights), size=len(batch.targets), p=weights / weights.sum()))
        pairs = torch.stack([batch.targets, drawn], dim=1).to(device)
        scores = scorer(batch.items.to(device), batch.lengths.to(device), pairs).cpu()
        valid = drawn != batch.targets
        positives.append(scores[valid, 0].numpy())
        negatives.append(scores[valid, 1].numpy())
    pos, neg = np.concatenate(positives), np.concatenate(negatives)
    ranks = pd.Series(np.concatenate([pos, neg])).rank(method="average").to_numpy()[: len(pos)]
    return float((ranks.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


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
