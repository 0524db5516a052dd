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
session order: a larger session number started later. Numpy only: serving imports no torch and no training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class VSKNNParams:
    """session-rec VMContextKNN defaults (k=100, sample_size=1000, recent sampling, linear 'div' weights)."""

    k: int = 100  # neighbour sessions
    sample_size: int = 1000  # most recent candidate sessions considered (0: all of them)
    idf_weighting: float = 0.0  # weight of the IDF term in the item score (0: off)


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


def last_positions(prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct items of the prefix and the 1-based position of each one's last click."""
    reversed_items = prefix[::-1]
    items, first_from_end = np.unique(reversed_items, return_index=True)
    return items, len(prefix) - first_from_end


def sum_by_item(items: np.ndarray, contributions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scored, inverse = np.unique(items, return_inverse=True)
    return scored, np.bincount(inverse, weights=contributions, minlength=len(scored))


def candidates(index: NeighbourIndex, items: np.ndarray, weights: np.ndarray, sample_size: int,
               exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The most recent `sample_size` sessions holding any of `items` (`exclude` left out: the session being
    served, when the index holds it), ascending, and each one's sum of the weights of the items it holds (the
    dot product). A session among the most recent M of the union is among the most recent M of each of its
    items' lists: cutting the lists first changes nothing."""
    most_recent = sample_size + (exclude is not None) if sample_size else 0
    flat, lengths = index.holders(items, most_recent)
    sessions, inverse = np.unique(flat, return_inverse=True)
    dot = np.bincount(inverse, weights=np.repeat(weights, lengths), minlength=len(sessions))
    if exclude is not None:
        kept = sessions != exclude
        sessions, dot = sessions[kept], dot[kept]
    if sample_size:
        sessions, dot = sessions[-sample_size:], dot[-sample_size:]
    return sessions, dot


def top_k(sessions: np.ndarray, sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar (ties: the more recent)."""
    best = np.lexsort((-sessions, -sim))[:k]
    return sessions[best], sim[best]


def idf(support: np.ndarray, n_sessions: int) -> np.ndarray:
    """log(|T| / |S_j|) per item (an item in no session: as if in one)."""
    return np.log(n_sessions / np.maximum(support, 1))


class VSKNN:
    """`sparse_scores(prefix)`: the items V-SKNN scores after `prefix` (item numbers of `index`) and their scores;
    reads the index at every call, so a live index's latest sessions count at once."""

    def __init__(self, index: NeighbourIndex, params: VSKNNParams):
        self.index, self.params = index, params

    @property
    def n_items(self) -> int:
        return self.index.n_items

    def sparse_scores(self, prefix: np.ndarray, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`exclude`: a session of the index not to count as a neighbour (the one whose prefix this is)."""
        p, index = self.params, self.index
        items, positions = last_positions(prefix)
        sessions, sim = top_k(*candidates(index, items, positions / len(prefix), p.sample_size, exclude), p.k)
        held, lengths = index.items_of(sessions)
        contributions = np.repeat(sim, lengths)
        if p.idf_weighting:
            contributions *= 1.0 + p.idf_weighting * idf(index.support_of(held), index.n_sessions)
        return sum_by_item(held, contributions)
