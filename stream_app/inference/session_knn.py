"""V-SKNN (Ludewig & Jannach 2018, session-rec `knn/vsknn.py`) over any index of past sessions: the one
implementation, scored offline on the training sessions (`training.evaluation.baselines`) and live on the
sessions a worker has seen (`stream_app.inference.session_index`), so that the two agree to the last digit.

    w(p) = p / |s|                                             linear decay, most recent = 1
    candidates = the `sample_size` most recent sessions among those sharing an item with s
    sim(s, n) = sum over i in s ∩ n of w(p_s(i))               dot product of the two vectors
    N(s) = the k candidates of highest sim (ties: more recent first)
    score(j | s) = sum over n in N(s) holding j of sim(s, n) * (1 + idf_weighting * log(|T| / |S_j|))

s = the current session's prefix, p_s(i) the 1-based position of i's last click in it; n = a past session, seen
as the set of its items; S_j = the past sessions holding j, |T| = how many past sessions there are. "Recent" is
session order: a larger session number started later. The candidates, the top k and the grouped sums are STAN's too
(`stream_app.inference.stan`). Numpy only: serving imports no torch and no training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt


@dataclass(frozen=True)
class VSKNNParams:
    """session-rec VMContextKNN defaults (k=100, sample_size=1000, recent sampling, linear 'div' weights)."""

    k: PositiveInt = 100  # neighbour sessions
    sample_size: NonNegativeInt = 1000  # most recent candidate sessions considered (0: all of them)
    idf_weighting: NonNegativeFloat = 0.0  # weight of the IDF term in the item score (0: off)


class NeighbourIndex(Protocol):
    """Past sessions as sets of items, and items as lists of the sessions holding them (ascending numbers)."""

    n_items: int

    @property
    def n_sessions(self) -> int: ...

    def holders(self, items: np.ndarray, most_recent: int) -> tuple[np.ndarray, np.ndarray]:
        """The sessions holding each item, ascending, the last `most_recent` of each (0: all), concatenated;
        and how many of each item's."""

    def items_of(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct items of each session, concatenated; and how many of each session's."""

    def support_of(self, items: np.ndarray) -> np.ndarray:
        """|S_j| for each item."""


def last_positions(prefixes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each prefix's distinct items (rows: the prefix's number; by row, then item ascending) and the 1-based
    position of each one's last click."""
    lengths = np.fromiter(map(len, prefixes), dtype=np.int64, count=len(prefixes))
    clicks = np.concatenate(prefixes).astype(np.int64, copy=False) if len(prefixes) else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(prefixes)), lengths)
    positions = np.arange(1, len(clicks) + 1) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    order = np.lexsort((positions, clicks, rows))
    last = np.ones(len(order), dtype=bool)  # the last click of each (row, item)
    last[:-1] = (rows[order][1:] != rows[order][:-1]) | (clicks[order][1:] != clicks[order][:-1])
    keep = order[last]
    return rows[keep], clicks[keep], positions[keep]


def grouped_sum(rows: np.ndarray, keys: np.ndarray,
                values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each distinct (row, key), by row then key ascending, and the sum of its values. np.bincount adds them in
    input order, so a row's sums are the same floats in a batch as alone; a sort numbers the groups (as
    np.unique's inverse would, in one call for the whole batch)."""
    stride = int(keys.max()) + 1 if len(keys) else 1
    combined = rows * stride + keys
    order = np.argsort(combined, kind="stable")  # timsort: holders come in sorted runs
    ordered = combined[order]
    new = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    group = np.empty(len(ordered), dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    first = order[new]
    return rows[first], keys[first], np.bincount(group, weights=values, minlength=len(first))


def rank_in_row(rows: np.ndarray) -> np.ndarray:
    """0, 1, ... within each row of `rows` (sorted); in one pass (a binary search per entry cost more)."""
    starts = np.flatnonzero(np.diff(rows, prepend=rows[:1] - 1)) if len(rows) else np.zeros(0, dtype=np.int64)
    return np.arange(len(rows)) - np.repeat(starts, np.diff(starts, append=len(rows)))


def candidates(index: NeighbourIndex, rows: np.ndarray, items: np.ndarray, weights: np.ndarray, sample_size: int,
               excludes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the most recent `sample_size` sessions holding any of the row's `items` (`excludes[row]` left
    out: the session being served, when the index holds it; -1: none), by row then session ascending, and each
    one's sum of the weights of the items it holds (the dot product). A session among the most recent M of the
    union, one excluded session aside, is among the most recent M + 1 of each of its items' lists: cutting the
    lists first changes nothing. Nor does leaving out, before the sums, the sessions older than a row's `floor`:
    the oldest kept of any of its items whose list was cut (to M + 1, or M with no session excluded), since the
    union holds that many sessions from there on (long lists, the popular items', are where the sums' work is)."""
    most_recent = sample_size + (excludes is not None) if sample_size else 0
    flat, lengths = index.holders(items, most_recent)
    entry_rows, entry_weights = np.repeat(rows, lengths), np.repeat(weights, lengths)
    cut = lengths >= most_recent if most_recent else np.zeros(len(lengths), dtype=bool)
    if cut.any():
        floor = np.full(int(rows.max()) + 1, -1, dtype=flat.dtype)
        np.maximum.at(floor, rows[cut], flat[(np.cumsum(lengths) - lengths)[cut]])
        kept = flat >= floor[entry_rows]
        flat, entry_rows, entry_weights = flat[kept], entry_rows[kept], entry_weights[kept]
    rows, sessions, dot = grouped_sum(entry_rows, flat, entry_weights)
    if excludes is not None:
        kept = sessions != excludes[rows]
        rows, sessions, dot = rows[kept], sessions[kept], dot[kept]
    if sample_size:
        kept = rank_in_row(-rows[::-1])[::-1] < sample_size  # counted from the row's end
        rows, sessions, dot = rows[kept], sessions[kept], dot[kept]
    return rows, sessions, dot


def top_k(rows: np.ndarray, sessions: np.ndarray, sim: np.ndarray,
          k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the k most similar (ties: the more recent), most similar first."""
    last = len(rows) - 1  # input by row, then session ascending: reversed, the more recent first in ties
    by_sim = np.argsort(-sim[::-1], kind="stable")
    then_row = rows[::-1][by_sim]  # then by row, stably: numpy radix-sorts 16-bit keys (a batch's row numbers)
    radix = len(rows) and rows[-1] < 2**15  # rows are sorted: the last is the largest
    order = last - by_sim[np.argsort(then_row.astype(np.int16) if radix else then_row, kind="stable")]
    best = order[rank_in_row(rows[order]) < k]
    return rows[best], sessions[best], sim[best]


def idf(support: np.ndarray, n_sessions: int) -> np.ndarray:
    """log(|T| / |S_j|) per item (an item in no session: as if in one)."""
    return np.log(n_sessions / np.maximum(support, 1))


class SessionKNN:
    """A session-kNN model over `index` (`batch_scores`: V-SKNN's, STAN's), and one prefix's scores from it."""

    def __init__(self, index: NeighbourIndex, params: object):
        self.index, self.params = index, params

    @property
    def n_items(self) -> int:
        return self.index.n_items

    def batch_scores(self, prefixes: Sequence[np.ndarray],
                     excludes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, item, score) of each scored item, by row then item ascending. `excludes[row]`: a session of the
        index not to count as a neighbour of that row (the one whose prefix it is; -1: none)."""
        raise NotImplementedError

    def sparse_scores(self, prefix: np.ndarray, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One prefix's scored items, ascending, and their scores."""
        _, items, scores = self.batch_scores([prefix], None if exclude is None else np.array([exclude]))
        return items, scores


class VSKNN(SessionKNN):
    """`batch_scores(prefixes)`: the items V-SKNN scores after each prefix (item numbers of `index`) and their
    scores, a batch at once (per-click numpy overhead, not arithmetic, is most of the cost of one prefix);
    reads the index at every call, so a live index's latest sessions count at once."""

    params: VSKNNParams

    def batch_scores(self, prefixes: Sequence[np.ndarray],
                     excludes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p, index = self.params, self.index
        rows, items, positions = last_positions(prefixes)
        lengths = np.fromiter(map(len, prefixes), dtype=np.int64, count=len(prefixes))
        rows, sessions, sim = top_k(*candidates(index, rows, items, positions / lengths[rows], p.sample_size,
                                                excludes), p.k)
        held, lengths = index.items_of(sessions)
        contributions = np.repeat(sim, lengths)
        if p.idf_weighting:
            contributions *= 1.0 + p.idf_weighting * idf(index.support_of(held), index.n_sessions)
        return grouped_sum(np.repeat(rows, lengths), held, contributions)
