"""Strong simple baselines on the models' protocol: item-kNN, V-SKNN and STAN.

Same predictions as `training.evaluation.evaluate`: every click of every test session but the last predicts
the next one,
from the session's clicks so far (the prefix); the whole catalogue is ranked; rank = number of items scoring
>= the target (conservative: a tie never helps). Item indices are the training split's (`EncodedSplit`).
Every score here is >= 0 and an item no neighbour holds scores 0, so a target scoring 0 gets rank n_items.

Notation: s = the current session's prefix, |s| its length, p = 1..|s| a position in it (|s| = most recent);
an item clicked twice takes the position of its last click (session-rec's `pos_map`). n = a training session,
seen as the set of its items (each item at the position of its last click in n). S_i = the training sessions
holding item i. "Recent" is session order: sessions are in start-time order (the `Sessions` invariant).

item-kNN (session-rec `knn/iknn.py`, ItemKNN; Hidasi et al. 2016's baseline):
    sim(i, j) = |S_i ∩ S_j| / ((|S_i| + lambda)^alpha * (|S_j| + lambda)^(1 - alpha)),   sim(i, i) = 0
    (alpha = 0.5, lambda = 0: the cosine of the binary session-occurrence vectors); each item keeps its
    `n_sims` most similar items (ties: lower index). score(j | s) = sim(s_|s|, j): the current item only.

V-SKNN (Ludewig & Jannach 2018): `stream_app.inference.session_knn`, the same code that scores a worker's live
index of recent sessions; here it runs on the training sessions (`TrainIndex`).

STAN (Garg et al., SIGIR 2019, as session-rec's `knn/stan.py`): `stream_app.inference.stan`, the same code that
scores a worker's live index; here it runs on the training sessions (`TrainIndex`), with `train_times` (each
training session's last click, seconds: `session_end_times`) as their times, or their numbers without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

import numpy as np
from pydantic import Field, NonNegativeFloat, PositiveInt
from tqdm import tqdm

from stream_app.inference.session_knn import VSKNN, VSKNNParams
from stream_app.inference.stan import STAN, STANParams
from training.data.click_log import ClickLog, EncodedSplit, Sessions


@dataclass(frozen=True)
class ItemKNNParams:
    """session-rec ItemKNN defaults (n_sims=100, lmbd=20, alpha=0.5)."""

    n_sims: PositiveInt = 100  # similar items kept per item
    lam: NonNegativeFloat = 20.0  # shrink term added to each item's support
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.5  # asymmetric cosine: 0.5 = symmetric


BaselineParams = ItemKNNParams | VSKNNParams | STANParams


# --- the training sessions, indexed both ways ---

def _ranges(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of rows[0]'s entries, rows[1]'s, ... of a CSR layout, and each row's length."""
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(lengths.sum()), lengths


@dataclass(frozen=True)
class TrainIndex:
    """Training sessions as sets of items (with each item's last position) and items as lists of sessions."""

    n_items: int
    offsets: np.ndarray  # session n holds items[offsets[n]:offsets[n+1]], each once, in order of last click
    items: np.ndarray
    positions: np.ndarray  # 1-based position of the item's last click in its session
    item_offsets: np.ndarray  # item i is in sessions item_sessions[item_offsets[i]:item_offsets[i+1]], ascending
    item_sessions: np.ndarray
    times: np.ndarray | None = None  # each session's last click, seconds; None: its number stands for it

    def __post_init__(self) -> None:
        if self.times is not None and len(self.times) != self.n_sessions:
            raise ValueError(f"train_times has {len(self.times)} entries for {self.n_sessions} training sessions")

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def seconds(self) -> bool:
        return self.times is not None

    @cached_property
    def latest_time(self) -> float:
        return float(self.times_of(np.arange(self.n_sessions)).max(initial=0.0))

    @classmethod
    def of(cls, train: Sessions, n_items: int, times: np.ndarray | None = None) -> TrainIndex:
        session = np.repeat(np.arange(train.n_sessions), train.lengths())
        position = np.arange(train.n_clicks) - train.offsets[session] + 1
        order = np.lexsort((position, train.items, session))  # by session, item, position
        last = np.ones(len(order), dtype=bool)  # the last click of each (session, item)
        last[:-1] = (session[order][1:] != session[order][:-1]) | (train.items[order][1:] != train.items[order][:-1])
        keep = order[last]
        keep = keep[np.lexsort((position[keep], session[keep]))]  # by session, position
        counts = np.bincount(session[keep], minlength=train.n_sessions)
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        items, sessions = train.items[keep], session[keep]
        by_item = np.lexsort((sessions, items))
        item_offsets = np.concatenate(([0], np.cumsum(np.bincount(items, minlength=n_items)))).astype(np.int64)
        times = None if times is None else np.asarray(times, dtype=np.float64)
        return cls(n_items, offsets, items, position[keep], item_offsets, sessions[by_item], times)

    def support(self) -> np.ndarray:
        """|S_i|: number of training sessions holding each item."""
        return np.diff(self.item_offsets)

    # the `stream_app.inference.stan.TimedIndex` protocol (`session_knn.NeighbourIndex`'s and more), which V-SKNN
    # and STAN score on

    def holders(self, items: np.ndarray, most_recent: int) -> tuple[np.ndarray, np.ndarray]:
        starts, ends = self.item_offsets[items], self.item_offsets[items + 1]
        if most_recent:
            starts = np.maximum(starts, ends - most_recent)
        lengths = ends - starts
        first = np.cumsum(lengths) - lengths
        return self.item_sessions[np.repeat(starts - first, lengths) + np.arange(lengths.sum())], lengths

    def items_of(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat, lengths = _ranges(self.offsets, sessions)
        return self.items[flat], lengths

    def support_of(self, items: np.ndarray) -> np.ndarray:
        return self.support()[items]

    def sizes(self, sessions: np.ndarray) -> np.ndarray:
        return self.offsets[sessions + 1] - self.offsets[sessions]

    def clicks_of(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat, lengths = _ranges(self.offsets, sessions)
        return self.items[flat], self.positions[flat], lengths

    def times_of(self, sessions: np.ndarray) -> np.ndarray:
        return sessions.astype(np.float64) if self.times is None else self.times[sessions]


# --- scoring: each model gives, for a prefix, the items it scores (> 0 or not) and their scores ---

class ItemKNN:
    def __init__(self, index: TrainIndex, params: ItemKNNParams, progress: bool = False):
        self.n_items = index.n_items
        support = index.support().astype(np.float64)
        left = (support + params.lam) ** params.alpha
        right = (support + params.lam) ** (1.0 - params.alpha)
        offsets, neighbours, sims = [0], [], []
        for i in tqdm(range(index.n_items), desc="item-kNN similarities", unit="item", disable=not progress):
            sessions = index.item_sessions[index.item_offsets[i]:index.item_offsets[i + 1]]
            flat, _ = _ranges(index.offsets, sessions)
            others, together = np.unique(index.items[flat], return_counts=True)  # |S_i ∩ S_j| for each j
            mask = others != i
            others, together = others[mask], together[mask]
            sim = together / np.maximum(left[i] * right[others], 1e-300)
            best = np.lexsort((others, -sim))[:params.n_sims]  # highest first, ties: lower index
            neighbours.append(others[best])
            sims.append(sim[best])
            offsets.append(offsets[-1] + len(best))
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.neighbours = np.concatenate(neighbours) if neighbours else np.zeros(0, np.int64)
        self.sims = np.concatenate(sims) if sims else np.zeros(0)

    def sparse_scores(self, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        current = prefix[-1]
        row = slice(self.offsets[current], self.offsets[current + 1])
        return self.neighbours[row], self.sims[row]


def dense_scores(model, prefix: np.ndarray) -> np.ndarray:
    """score(j | prefix) for every item j (0 where the model scores nothing)."""
    scores = np.zeros(model.n_items)
    items, values = model.sparse_scores(np.asarray(prefix, dtype=np.int64))
    scores[items] = values
    return scores


def ranks_of(model, sessions: Sessions, progress: bool = False, desc: str = "baseline") -> np.ndarray:
    """Conservative rank of every next click of `sessions`, in click order (as `training.evaluation.evaluate`)."""
    n_predictions = int(np.maximum(sessions.lengths() - 1, 0).sum())
    ranks = np.empty(n_predictions, dtype=np.int64)
    r = 0
    with tqdm(total=n_predictions, desc=desc, unit="pred", disable=not progress, smoothing=0.05) as bar:
        for s in range(sessions.n_sessions):
            clicks = sessions.items[sessions.offsets[s]:sessions.offsets[s + 1]]
            for t in range(1, len(clicks)):
                items, scores = model.sparse_scores(clicks[:t])
                hit = np.flatnonzero(items == clicks[t])
                target = scores[hit[0]] if len(hit) else 0.0
                ranks[r] = np.count_nonzero(scores >= target) if target > 0 else model.n_items
                r += 1
            bar.update(len(clicks) - 1)
    return ranks


# --- the registry: what retrain's metrics table calls ---

@dataclass(frozen=True)
class Baseline:
    params: type
    build: Callable[[TrainIndex, BaselineParams, bool], object]


BASELINES: dict[str, Baseline] = {
    "item_knn": Baseline(ItemKNNParams, lambda index, params, progress: ItemKNN(index, params, progress)),
    "vsknn": Baseline(VSKNNParams, lambda index, params, progress: VSKNN(index, params)),
    "stan": Baseline(STANParams, lambda index, params, progress: STAN(index, params)),
}


def build_baseline(name: str, params: BaselineParams | None, train: Sessions, n_items: int,
                   train_times: np.ndarray | None = None, progress: bool = False):
    """A fitted baseline (`sparse_scores(prefix)`, `n_items`); params None: the defaults."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    spec = BASELINES[name]
    params = spec.params() if params is None else params
    if not isinstance(params, spec.params):
        raise TypeError(f"{name} takes {spec.params.__name__}, not {type(params).__name__}")
    return spec.build(TrainIndex.of(train, n_items, train_times), params, progress)


def baseline_ranks(name: str, params: BaselineParams | None, split: EncodedSplit, *,
                   train_times: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
    """Conservative rank of every next click of `split.test`, in click order: the same predictions, in the same
    order, as the models' ranks in `training.evaluation.evaluate` (for `RankingMetrics.from_ranks`). `train_times`: each
    training session's last click in seconds (`session_end_times`), used by STAN's time decay only."""
    model = build_baseline(name, params, split.train, len(split.item_map), train_times, progress)
    return ranks_of(model, split.test, progress, desc=name)


def session_end_times(log: ClickLog) -> np.ndarray | None:
    """Each session's last-click time (seconds; STAN's t_n, as session-rec's), None for a time-less log. Aligned
    with `EncodedSplit.train` when `log` is the training log (its item map is fitted on it: no training session is
    ever dropped)."""
    if log.times is None:
        return None
    return log.times[log.session_offsets()[1:] - 1]


__all__ = ["BASELINES", "Baseline", "BaselineParams", "ItemKNN", "ItemKNNParams", "STAN", "STANParams", "TrainIndex",
           "VSKNN", "VSKNNParams", "baseline_ranks", "build_baseline", "dense_scores", "ranks_of",
           "session_end_times"]
