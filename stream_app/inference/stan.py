"""STAN (Garg et al., SIGIR 2019, "Sequence and Time Aware Neighborhood for Session-based Recommendations"), as
session-rec implements it (`knn/stan.py`, the code behind its published STAN figures), over any index of past
sessions: the one implementation, scored offline on the training sessions (`training.evaluation.baselines`) and
live on the sessions a worker has seen (`stream_app.inference.session_index`), so that the two agree to the last
digit.

    w1(p) = exp((p - |s|) / lambda_position)                   position decay in s (session-rec: lambda_spw)
    w2(n) = exp(-(t_s - t_n) / lambda_time)                    recency of the neighbour session (lambda_snh)
    sim(s, n) = w2(n) * sum over i in s ∩ n of w1(p_s(i)) / (sqrt(sum over i in s of w1(p_s(i))^2) * sqrt(|n|))
            the cosine of s's weighted vector and n's binary one (|n| = n's distinct items), times w2
    N(s) = the k most similar of the `sample_size` most recent sessions sharing an item with s (ties: more recent)
    p_n(i*) = the last position in n of an item that s holds (the latest click of n on a shared item)
    w3(j, n) = exp(-|p_n(j) - p_n(i*)| / lambda_item)           distance from it within n (lambda_inh)
    score(j | s) = sum over n in N(s) holding j of sim(s, n) * w3(j, n)

s = the current session's prefix, |s| its length, p = 1..|s| a position in it; an item clicked twice takes the
position of its last click, in s as in n (session-rec's `pos_map`). The items of s are scored like any other
(session-rec's remind=True: re-clicks are common); with `zero_shared_item`, the item at p_n(i*) gets w3 = 0 in n
(a reading of the paper's factor 3 that session-rec does not implement).

Time: t_n is n's last click. An index with times (`seconds`: a worker's clicks, a training log's) gives it in
seconds and lambda_time applies (session-rec's lambda_snh is in days: 5 by default); one without (SR-GNN pickles
hold none) gives n's number, session order as time, and lambda_time_sessions applies (None: no decay). t_s is the
same for every neighbour of s, so only t_n matters to the ranking: t_s is the index's latest click (live, the
click being served: the worker indexes it first). How this code once differed from session-rec's, and what each
difference cost: docs/experiments.md ("STAN against session-rec"). Numpy only: serving imports no torch and no
training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from stream_app.inference.session_knn import (
    NeighbourIndex,
    SessionKNN,
    candidates,
    grouped_sum,
    last_positions,
    top_k,
)


@dataclass(frozen=True)
class STANParams:
    """session-rec STAN defaults (k=100, sample_size=5000, lambda_spw=1.02, lambda_snh=5 days, lambda_inh=2.05,
    remind=True)."""

    k: PositiveInt = 100  # neighbour sessions
    sample_size: NonNegativeInt = 5000  # most recent candidate sessions considered (0: all of them)
    lambda_position: PositiveFloat = 1.02  # λ1 (session-rec lambda_spw), in clicks
    lambda_time: PositiveFloat = 5 * 86_400.0  # λ2 (session-rec lambda_snh, in days there), seconds, index with times
    # λ2 in sessions, for an index without times (session order as time). Off by default: a count of sessions has
    # no published value (5 days is no fixed number of sessions), and a wrong guess costs much recall
    # (docs/experiments.md).
    lambda_time_sessions: PositiveFloat | None = None  # None: no decay (config.json stays strict JSON, unlike inf)
    lambda_item: PositiveFloat = 2.05  # λ3 (session-rec lambda_inh), in clicks
    zero_shared_item: bool = False  # True: w3 = 0 for the item at p_n(i*); False: scored like the rest, as session-rec


class TimedIndex(NeighbourIndex, Protocol):
    """A `NeighbourIndex` that also knows where in each session its items were last clicked, and when."""

    seconds: bool  # times are seconds; False: each session's time is its number

    @property
    def latest_time(self) -> float:
        """t_s: the latest click's time."""

    def sizes(self, sessions: np.ndarray) -> np.ndarray:
        """|n|: each session's distinct items."""

    def clicks_of(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct items of each session, concatenated; the 1-based position of each one's last click in its
        session; and how many of each session's."""

    def times_of(self, sessions: np.ndarray) -> np.ndarray:
        """t_n: each session's last click time (float64)."""


class STAN(SessionKNN):
    """`batch_scores(prefixes, excludes)`, as `stream_app.inference.session_knn.VSKNN`'s: reads the index at every
    call, so a live index's latest sessions (and its latest time) count at once."""

    index: TimedIndex
    params: STANParams

    def batch_scores(self, prefixes: Sequence[np.ndarray],
                     excludes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p, index = self.params, self.index
        in_row, items, positions = last_positions(prefixes)
        lengths = np.fromiter(map(len, prefixes), dtype=np.int64, count=len(prefixes))
        w1 = np.exp((positions - lengths[in_row]) / p.lambda_position)
        norm = np.sqrt(np.bincount(in_row, weights=w1 ** 2, minlength=len(prefixes)))  # input order: as alone
        rows, sessions, dot = candidates(index, in_row, items, w1, p.sample_size, excludes)
        sim = dot / (norm[rows] * np.sqrt(index.sizes(sessions)))
        lambda_time = p.lambda_time if index.seconds else p.lambda_time_sessions
        if lambda_time is not None:
            sim *= np.exp(-(index.latest_time - index.times_of(sessions)) / lambda_time)
        rows, sessions, sim = top_k(rows, sessions, sim, p.k)
        held, held_position, lengths = index.clicks_of(sessions)
        neighbour = np.repeat(np.arange(len(sessions)), lengths)
        held_row = rows[neighbour]
        # shared: (row, item) is one of the prefixes' (sorted by row then item, as last_positions gives them)
        stride = int(max(items.max(initial=0), held.max(initial=0))) + 1
        prefix_keys, held_keys = in_row * stride + items, held_row * stride + held
        shared = prefix_keys[np.minimum(np.searchsorted(prefix_keys, held_keys), len(prefix_keys) - 1)] == held_keys
        # p_n(i*): the largest position of a shared item in each neighbour (every neighbour holds one)
        starts = np.cumsum(lengths) - lengths
        star_position = np.maximum.reduceat(np.where(shared, held_position, 0), starts) if len(held) else held
        distance = np.abs(held_position - star_position[neighbour])
        w3 = np.exp(-distance / p.lambda_item)
        if p.zero_shared_item:
            w3[distance == 0] = 0.0
        return grouped_sum(held_row, held, sim[neighbour] * w3)
