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

STAN (Garg et al., SIGIR 2019, "Sequence and Time Aware Neighborhood for Session-based Recommendations"), as
session-rec implements it (`knn/stan.py`, the code behind its published STAN figures):
    w1(p) = exp((p - |s|) / lambda_position)                   position decay in s (session-rec: lambda_spw)
    w2(n) = exp(-(t_s - t_n) / lambda_time)                    recency of the neighbour session (lambda_snh)
    sim(s, n) = w2(n) * sum over i in s ∩ n of w1(p_s(i)) / (sqrt(sum over i in s of w1(p_s(i))^2) * sqrt(|n|))
            the cosine of s's weighted vector and n's binary one (|n| = n's distinct items), times w2
    N(s) = the k most similar of the `sample_size` most recent sessions sharing an item with s
    p_n(i*) = the last position in n of an item that s holds (the latest click of n on a shared item)
    w3(j, n) = exp(-|p_n(j) - p_n(i*)| / lambda_item)           distance from it within n (lambda_inh)
    score(j | s) = sum over n in N(s) holding j of sim(s, n) * w3(j, n)
    The items of s are scored like any other (session-rec's remind=True: re-clicks are common); with
    `zero_shared_item`, the item at p_n(i*) gets w3 = 0 in n (a reading of the paper's factor 3 that session-rec
    does not implement). Time: with `train_times` (each training session's last click, seconds, as session-rec's
    `session_time`) t_n is that and lambda_time is in seconds (session-rec's lambda_snh is in days: 5 by default);
    without (SR-GNN pickles hold none), t_n is the session's index and lambda_time_sessions is used instead, in
    sessions (default: None, no time decay). t_s is the same for every neighbour of s, so only t_n - t_latest
    matters to the ranking (t_s = the latest session's time). How this code once differed from session-rec's, and
    what each difference cost: docs/experiments.md ("STAN against session-rec").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from stream_app.inference.session_knn import (
    VSKNN,
    VSKNNParams,
    candidates,
    grouped_sum,
    last_positions,
    top_k,
)
from training.data.click_log import ClickLog, EncodedSplit, Sessions


@dataclass(frozen=True)
class ItemKNNParams:
    """session-rec ItemKNN defaults (n_sims=100, lmbd=20, alpha=0.5)."""

    n_sims: int = 100  # similar items kept per item
    lam: float = 20.0  # shrink term added to each item's support
    alpha: float = 0.5  # asymmetric cosine: 0.5 = symmetric


@dataclass(frozen=True)
class STANParams:
    """session-rec STAN defaults (k=100, sample_size=5000, lambda_spw=1.02, lambda_snh=5 days, lambda_inh=2.05,
    remind=True)."""

    k: int = 100  # neighbour sessions
    sample_size: int = 5000  # most recent candidate sessions considered (0: all of them)
    lambda_position: float = 1.02  # λ1 (session-rec lambda_spw), in clicks
    lambda_time: float = 5 * 86_400.0  # λ2 (session-rec lambda_snh, there in days) in seconds, used with train_times
    # λ2 in sessions, used without train_times (session order as time). Off by default: a count of sessions has
    # no published value (5 days is no fixed number of sessions), and a wrong guess costs much recall
    # (docs/experiments.md).
    lambda_time_sessions: float | None = None  # None: no decay (config.json stays strict JSON, unlike inf)
    lambda_item: float = 2.05  # λ3 (session-rec lambda_inh), in clicks
    zero_shared_item: bool = False  # True: w3 = 0 for the item at p_n(i*); False: scored like the rest, as session-rec


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

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def of(cls, train: Sessions, n_items: int) -> TrainIndex:
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
        return cls(n_items, offsets, items, position[keep], item_offsets, sessions[by_item])

    def support(self) -> np.ndarray:
        """|S_i|: number of training sessions holding each item."""
        return np.diff(self.item_offsets)

    # the `stream_app.inference.session_knn.NeighbourIndex` protocol, which V-SKNN scores on

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


class STAN:
    def __init__(self, index: TrainIndex, params: STANParams, train_times: np.ndarray | None = None):
        self.index, self.n_items, self.params = index, index.n_items, params
        if train_times is None:
            times, lam = np.arange(index.n_sessions, dtype=np.float64), params.lambda_time_sessions
        else:
            times, lam = np.asarray(train_times, dtype=np.float64), params.lambda_time
            if len(times) != index.n_sessions:
                raise ValueError(f"train_times has {len(times)} entries for {index.n_sessions} training sessions")
        # w2 with t_s = the latest session; no decay: 1 for every session
        self.recency = np.ones(len(times)) if lam is None else np.exp(-(times.max(initial=0.0) - times) / lam)
        self.root_length = np.sqrt(np.diff(index.offsets))  # sqrt(|n|), n's distinct items
        self.in_prefix = np.zeros(index.n_items, dtype=bool)  # scratch: the items of s

    def sparse_scores(self, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        rows, items, positions = last_positions([prefix])  # one row: V-SKNN's helpers, batched
        w1 = np.exp((positions - len(prefix)) / p.lambda_position)
        rows, sessions, dot = candidates(self.index, rows, items, w1, p.sample_size)
        cosine = dot / (np.sqrt(np.sum(w1 ** 2)) * self.root_length[sessions])
        _, sessions, sim = top_k(rows, sessions, cosine * self.recency[sessions], p.k)
        index = self.index
        flat, lengths = _ranges(index.offsets, sessions)
        held, held_position = index.items[flat], index.positions[flat]
        neighbour = np.repeat(np.arange(len(sessions)), lengths)
        self.in_prefix[items] = True
        shared = self.in_prefix[held]
        self.in_prefix[items] = False
        # p_n(i*): the largest position of a shared item in each neighbour (every neighbour holds one)
        starts = np.cumsum(lengths) - lengths
        star_position = np.maximum.reduceat(np.where(shared, held_position, 0), starts) if len(held) else held
        distance = np.abs(held_position - star_position[neighbour])
        w3 = np.exp(-distance / p.lambda_item)
        if p.zero_shared_item:
            w3[distance == 0] = 0.0
        return grouped_sum(np.zeros_like(held), held, sim[neighbour] * w3)[1:]


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
    build: Callable[[TrainIndex, BaselineParams, np.ndarray | None, bool], object]


BASELINES: dict[str, Baseline] = {
    "item_knn": Baseline(ItemKNNParams, lambda index, params, times, progress: ItemKNN(index, params, progress)),
    "vsknn": Baseline(VSKNNParams, lambda index, params, times, progress: VSKNN(index, params)),
    "stan": Baseline(STANParams, lambda index, params, times, progress: STAN(index, params, times)),
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
    return spec.build(TrainIndex.of(train, n_items), params, train_times, progress)


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
