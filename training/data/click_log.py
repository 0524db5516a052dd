"""The click log and its encoding: every source becomes a `ClickLog` with one invariant, so the trainer, the
evaluator and the stream replay never look at file formats (`training.data.readers`, `training.data.pickles`);
`EncodedSplit` turns a train and a test log into item-index sessions. Bad data fails loudly with `DataError`
naming the file and the row: a silently mis-ordered session trains a wrong model.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


class DataError(ValueError):
    """Bad input data; the message names the file and the 1-based data row (or pickle index)."""


@dataclass(frozen=True)
class ClickLog:
    """Clicks of many sessions as parallel arrays. Invariant: each session's clicks are contiguous and in
    time order; sessions are ordered by the time of their first click (ties and time-less sources: file order)."""

    session_ids: np.ndarray  # dtype object (str), one per click
    item_ids: np.ndarray  # dtype object (str), one per click
    times: np.ndarray | None  # float64 unix seconds, one per click; None when the source has no time
    source: str  # where it came from, for messages and artifact metadata

    def __post_init__(self):
        n = len(self.session_ids)
        if len(self.item_ids) != n or (self.times is not None and len(self.times) != n):
            raise ValueError("session_ids, item_ids and times must have one entry per click")

    def session_offsets(self) -> np.ndarray:
        """int64 [n_sessions + 1]: session s is clicks offsets[s]:offsets[s+1]."""
        ids = self.session_ids
        if not len(ids):
            return np.zeros(1, np.int64)
        starts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        return np.concatenate(([0], starts, [len(ids)])).astype(np.int64)

    def sessions_as_ids(self) -> list[list[str]]:
        """The sessions as lists of external item ids: what the serving path and the quality gate take."""
        offsets = self.session_offsets()
        return [[str(item) for item in self.item_ids[start:end]] for start, end in itertools.pairwise(offsets)]

    @property
    def n_sessions(self) -> int:
        return len(self.session_offsets()) - 1

    @property
    def n_clicks(self) -> int:
        return len(self.session_ids)

    def time_range(self) -> tuple[float, float] | None:
        if self.times is None or not self.n_clicks:
            return None
        return float(self.times.min()), float(self.times.max())

    def head_sessions(self, n: int) -> ClickLog:
        """The first n sessions: small real slices for tests and smoke runs."""
        end = self.session_offsets()[min(n, self.n_sessions)]
        times = None if self.times is None else self.times[:end]
        return ClickLog(self.session_ids[:end], self.item_ids[:end], times, self.source)

    def take_sessions(self, keep: np.ndarray) -> ClickLog:
        """The sessions where `keep` (bool, one per session) is true, in the same order (the invariant holds)."""
        clicks = np.repeat(np.asarray(keep, dtype=bool), np.diff(self.session_offsets()))
        times = None if self.times is None else self.times[clicks]
        return ClickLog(self.session_ids[clicks], self.item_ids[clicks], times, self.source)




class ItemMap:
    """External item ids (str) ↔ contiguous indices 0..n-1. Index order: first appearance in the training log."""

    def __init__(self, ids):
        self.ids = np.asarray(ids, dtype=object)
        self._index = pd.Index(self.ids, dtype=object)
        if not self._index.is_unique:
            raise ValueError("item ids must be unique")

    @classmethod
    def fit(cls, item_ids: np.ndarray) -> ItemMap:
        return cls(pd.unique(np.asarray(item_ids, dtype=object)))

    def encode(self, item_ids) -> np.ndarray:
        """int64 indices; -1 for ids the map does not know."""
        return self._index.get_indexer(np.asarray(item_ids, dtype=object)).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.ids.tolist()))

    @classmethod
    def load(cls, path) -> ItemMap:
        return cls(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Sessions:
    """Item indices of sessions in start-time order: session s is items[offsets[s]:offsets[s+1]]."""

    offsets: np.ndarray  # int64 [n_sessions + 1]
    items: np.ndarray  # int64
    n_dropped_clicks: int  # clicks on items the map does not know, removed

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_clicks(self) -> int:
        return len(self.items)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def split_at(self, s: int) -> tuple[Sessions, Sessions]:
        """Sessions [0, s) and [s, n): in start-time order, the earlier ones and the later ones."""
        cut = self.offsets[s]
        return (Sessions(self.offsets[: s + 1], self.items[:cut], self.n_dropped_clicks),
                Sessions(self.offsets[s:] - cut, self.items[cut:], 0))

    @classmethod
    def concat(cls, parts: list[Sessions]) -> Sessions:
        """The sessions of `parts`, one part after another (the inverse of `split_at`)."""
        shifts = np.cumsum([0] + [part.n_clicks for part in parts[:-1]])
        offsets = np.concatenate([[0]] + [part.offsets[1:] + shift for part, shift in zip(parts, shifts)])
        return cls(offsets.astype(np.int64), np.concatenate([part.items for part in parts]),
                   sum(part.n_dropped_clicks for part in parts))


def encode_sessions(log: ClickLog, item_map: ItemMap) -> Sessions:
    """Map clicks to item indices, dropping (and counting) clicks on unknown items; a session left empty
    is removed, the order is kept."""
    items = item_map.encode(log.item_ids)
    known = items >= 0
    session_of_click = np.repeat(np.arange(log.n_sessions), np.diff(log.session_offsets()))
    lengths = np.bincount(session_of_click[known], minlength=log.n_sessions)
    offsets = np.concatenate(([0], np.cumsum(lengths[lengths > 0]))).astype(np.int64)
    return Sessions(offsets, items[known], int((~known).sum()))


def item_popularity(sessions: Sessions, n_items: int) -> np.ndarray:
    """int64 click count per item index (popularity baselines, negative sampling)."""
    counts = np.bincount(sessions.items, minlength=n_items)
    if len(counts) > n_items:
        raise ValueError(f"sessions hold item index {len(counts) - 1}, beyond n_items={n_items}")
    return counts.astype(np.int64)


@dataclass(frozen=True)
class EncodedSplit:
    """A train/test split in the index space of the training items: what every trainer starts from."""

    train: Sessions
    test: Sessions
    item_map: ItemMap
    popularity: np.ndarray  # training click counts per item index

    @classmethod
    def of(cls, train_log: ClickLog, test_log: ClickLog) -> EncodedSplit:
        item_map = ItemMap.fit(train_log.item_ids)
        train = encode_sessions(train_log, item_map)
        return cls(train, encode_sessions(test_log, item_map), item_map, item_popularity(train, len(item_map)))
