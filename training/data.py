"""Click logs in, item-index sessions out.

Every source (TSV/CSV/Parquet event logs, SR-GNN pickles) becomes a `ClickLog` with one invariant, so
the trainer, the evaluator and the stream replay never look at file formats. Bad rows fail loudly with
`DataError` naming the file and the row: a silently mis-ordered session trains a wrong model.
"""

from __future__ import annotations

import gzip
import json
import pickle
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

_SEPARATORS = ("\t", ";", ",")
_TIME_SCALE = {"s": 1, "ms": 1000}  # divisor to seconds
_PARQUET_SUFFIXES = (".parquet", ".pq")


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


def read_event_log(path, *, session_key="SessionId", item_key="ItemId", time_key="Time", time_unit="s",
                   date_key=None, sep=None) -> ClickLog:
    """Read a TSV/CSV (optionally .gz) or Parquet click log into a `ClickLog`.

    Without `date_key`, `time_key` is an absolute time and each session's rows must already be in time
    order in the file (a row going back in time means a broken export, so it raises). With `date_key`
    (raw Diginetica: `timeframe` = ms since session start, `eventdate` = day), the time is the session's
    first day plus the offset, and rows are put in time order within their session: that format stores
    them in no particular order, and a session crossing midnight keeps its real duration.
    """
    path = Path(path)
    if time_unit not in _TIME_SCALE:
        raise ValueError(f"time_unit must be one of {list(_TIME_SCALE)}, not {time_unit!r}")
    frame = _read_table(path, sep)
    wanted = [session_key, item_key, time_key] + ([date_key] if date_key else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {', '.join(missing)}; columns present: "
                        f"{', '.join(map(str, frame.columns))}")
    if frame.empty:
        raise DataError(f"{path.name}: no data rows")
    sessions = _ids(frame[session_key], path, "session")
    items = _ids(frame[item_key], path, "item")
    times = pd.to_numeric(frame[time_key], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    _check_parsed(np.isfinite(times), frame[time_key], path, "time")
    times = times / _TIME_SCALE[time_unit]
    codes, _ = pd.factorize(sessions)  # session number by first appearance: the stable tie-break
    if date_key:
        day = pd.to_datetime(frame[date_key], format="%Y-%m-%d", errors="coerce")
        _check_parsed(day.notna().to_numpy(), frame[date_key], path, "date")
        day_s = (day - pd.Timestamp(0)).dt.total_seconds().to_numpy()
        times = times + pd.Series(day_s).groupby(codes).transform("min").to_numpy()
    first_time = pd.Series(times).groupby(codes).min().to_numpy()
    keys = (times, codes, first_time[codes]) if date_key else (codes, first_time[codes])
    order = np.lexsort(keys)  # stable: file order survives wherever the keys tie
    sessions, items, times = sessions[order], items[order], times[order]
    back = np.flatnonzero((sessions[1:] == sessions[:-1]) & (times[1:] < times[:-1]))
    if len(back):
        k = back[np.argmin(order[back + 1])]  # report the earliest offending row of the file
        raise DataError(f"{path.name}: row {order[k + 1] + 1}: time goes backwards within session "
                        f"'{sessions[k]}' ({times[k + 1]} < {times[k]})")
    return ClickLog(sessions, items, times, str(path))


def _read_table(path: Path, sep: str | None) -> pd.DataFrame:
    """All columns as strings (ids must never become ints or floats); Parquet keeps its types."""
    if path.suffix in _PARQUET_SUFFIXES:
        return pd.read_parquet(path)
    if sep is None:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as f:
            header = f.readline()
        sep = max(_SEPARATORS, key=header.count)
    try:
        # Blank lines stay rows so that row numbers in messages match the file.
        return pd.read_csv(path, sep=sep, dtype=str, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path.name}: {e}") from e


def _ids(column: pd.Series, path: Path, what: str) -> np.ndarray:
    text = column.astype(str)
    bad = column.isna().to_numpy() | (text.str.strip() == "").to_numpy()
    if bad.any():
        raise DataError(f"{path.name}: row {np.argmax(bad) + 1}: missing {what} id")
    return text.to_numpy(dtype=object)


def _check_parsed(ok: np.ndarray, column: pd.Series, path: Path, what: str) -> None:
    if not ok.all():
        row = np.argmin(ok)
        raise DataError(f"{path.name}: row {row + 1}: unparsable {what} {column.iloc[row]!r}")


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only lists, tuples and ints are expected")


def load_pickle_restricted(path):
    """Unpickle (gzip or plain) without importing anything: a pickle naming any global is refused, so a
    tampered data file cannot run code."""
    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(path, "rb") as f:
        try:
            return _NoGlobals(f).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise DataError(f"{path.name}: {e}") from e


def read_srgnn_train(path) -> ClickLog:
    """SR-GNN `all_train_seq.txt`: a pickled list of item-id lists, one per session, in time order."""
    path = Path(path)
    seqs = load_pickle_restricted(path)
    if not isinstance(seqs, list):
        raise DataError(f"{path.name}: expected a pickled list of sessions, got {type(seqs).__name__}")
    return _sequences_log(_checked_sessions(seqs, path), "", path)


def read_srgnn_test(path) -> ClickLog:
    """SR-GNN `test.txt`: (inputs, targets) prefix-augmented; rebuild the full sessions.

    Each session s gives samples (s[:-i], s[-i]) for i = 1..len(s)-1, longest input first, so a chain
    starting with an input of length L spans L samples. Every sample is checked against its chain: the
    rebuilt sessions then give back exactly the published (prefix -> next) samples.
    """
    path = Path(path)
    pair = load_pickle_restricted(path)
    if not _is_samples(pair, 2):
        raise DataError(f"{path.name}: expected a pickled (inputs, targets) pair of equal-length lists")
    return _sequences_log(_rebuilt_sessions(*pair, path)[0], "test-", path)


SESSION_PICKLE_SHAPES = ("a list of sessions (lists of item ids), an SR-GNN (inputs, targets) pair, or a "
                         "(session ids, inputs, targets, timestamps) tuple")


def looks_like_pickle(path) -> bool:
    """By content, not name: a pickle (gzip'd or not) starts with PROTO (protocol 2+) or, in protocols 0-1,
    with MARK or EMPTY_LIST; a text or Parquet click log does not."""
    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            first = f.read(1)
    except (OSError, EOFError):
        return False
    return first in (b"\x80", b"(", b"]")


def read_session_pickle(path, id_prefix: str = "") -> ClickLog:
    """Sessions from a pickle of any shape SR-GNN-style preprocessing writes, told apart by content:
    a list of sessions (`all_train_seq.txt`); an (inputs, targets) pair, prefix-augmented (`train.txt`,
    `test.txt`: rebuilt as `read_srgnn_test` does); a (session ids, inputs, targets, timestamps) tuple, the
    same samples with each one's session id and time (ids must agree along a session's chain; the session's
    time is its samples' earliest, on each of its clicks, and sessions are put in time order). Session ids
    are `{id_prefix}0`, `{id_prefix}1`, ... where the file names none. Any other shape: `DataError`."""
    path = Path(path)
    data = load_pickle_restricted(path)
    if isinstance(data, list):
        return _sequences_log(_checked_sessions(data, path), id_prefix, path)
    if _is_samples(data, 2):
        return _sequences_log(_rebuilt_sessions(*data, path)[0], id_prefix, path)
    if _is_samples(data, 4):
        return _timed_samples_log(*data, path)
    shape = type(data).__name__ + (f" of {len(data)}" if isinstance(data, tuple) else "")
    raise DataError(f"{path.name}: expected {SESSION_PICKLE_SHAPES}; got a {shape}")


def _is_samples(data, n: int) -> bool:
    """An n-tuple of equal-length lists (SR-GNN samples, with ids and times when n = 4)."""
    return (isinstance(data, tuple) and len(data) == n and all(isinstance(p, list) for p in data)
            and len({len(p) for p in data}) == 1)


def _checked_sessions(seqs: list, path: Path) -> list[list[int]]:
    for i, seq in enumerate(seqs):
        if not _is_int_list(seq):
            raise DataError(f"{path.name}: session {i}: expected a non-empty list of ints, got {seq!r:.80}")
    return seqs


def _rebuilt_sessions(inputs: list, targets: list, path: Path) -> tuple[list[list[int]], list[int]]:
    """The sessions of prefix-augmented samples, and the index of each one's first sample."""
    sessions, starts, j = [], [], 0
    while j < len(inputs):
        first = inputs[j]
        if not (_is_int_list(first) and type(targets[j]) is int):
            raise DataError(f"{path.name}: sample {j}: expected a non-empty list of ints and an int target")
        length = len(first) + 1
        if j + length - 1 > len(inputs):
            raise DataError(f"{path.name}: sample {j}: the file ends inside this session's prefix chain "
                            f"({len(inputs) - j} of {length - 1} samples)")
        session = [*first, targets[j]]
        for i in range(2, length):  # sample j+i-1 must be (session[:-i], session[-i])
            if inputs[j + i - 1] != session[:-i] or targets[j + i - 1] != session[-i]:
                raise DataError(f"{path.name}: sample {j + i - 1}: breaks the prefix chain of the session "
                                f"starting at sample {j}")
        sessions.append(session)
        starts.append(j)
        j += length - 1
    return sessions, starts


def _timed_samples_log(ids: list, inputs: list, targets: list, timestamps: list, path: Path) -> ClickLog:
    sessions, starts = _rebuilt_sessions(inputs, targets, path)
    for j, (sid, t) in enumerate(zip(ids, timestamps)):
        if type(sid) not in (int, str) or type(t) not in (int, float) or not np.isfinite(t):
            raise DataError(f"{path.name}: sample {j}: expected an int or str session id and a number timestamp, "
                            f"got {sid!r:.40} and {t!r:.40}")
    ends = starts[1:] + [len(inputs)]
    names, times = [], []
    for first, end in zip(starts, ends):
        if any(ids[j] != ids[first] for j in range(first, end)):
            j = next(j for j in range(first, end) if ids[j] != ids[first])
            raise DataError(f"{path.name}: sample {j}: session id {ids[j]!r} differs from {ids[first]!r} of the "
                            f"session starting at sample {first}")
        names.append(str(ids[first]))
        times.append(float(min(timestamps[first:end])))
    if len(set(names)) < len(names):
        seen = set()
        k = next(k for k, name in enumerate(names) if name in seen or seen.add(name))
        raise DataError(f"{path.name}: sample {starts[k]}: session id {names[k]!r} already names an earlier session")
    order = np.argsort(np.asarray(times), kind="stable")  # time order, file order where times tie
    sessions = [sessions[k] for k in order]
    lengths = np.fromiter(map(len, sessions), np.int64, count=len(sessions))
    items = np.fromiter(chain.from_iterable(sessions), np.int64, count=int(lengths.sum()))
    return ClickLog(np.repeat(np.asarray(names, dtype=object)[order], lengths), items.astype(str).astype(object),
                    np.repeat(np.asarray(times)[order], lengths), str(path))


def _is_int_list(seq) -> bool:
    return isinstance(seq, list) and len(seq) > 0 and all(type(x) is int for x in seq)


def _sequences_log(seqs: list[list[int]], id_prefix: str, path: Path) -> ClickLog:
    """Time-less sources: sessions in file order, ids `{id_prefix}0`, `{id_prefix}1`, ..."""
    lengths = np.fromiter(map(len, seqs), np.int64, count=len(seqs))
    names = np.char.add(id_prefix, np.arange(len(seqs)).astype(str)).astype(object)
    items = np.fromiter(chain.from_iterable(seqs), np.int64, count=int(lengths.sum()))
    return ClickLog(np.repeat(names, lengths), items.astype(str).astype(object), None, str(path))


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


def read_item_categories(path, item_map: ItemMap) -> np.ndarray:
    """int64 [n_items]: each item's category as an index 1..C, 0 for items the file does not list.
    The file (CSV/TSV/Parquet, .gz) has an item-id column first and a category column second, with a header
    (Diginetica's product-categories.csv: `itemId;categoryId`)."""
    path = Path(path)
    frame = _read_table(path, None)
    if frame.shape[1] < 2:
        raise DataError(f"{path.name}: expected an item column and a category column, got {list(frame.columns)}")
    items, categories = _ids(frame.iloc[:, 0], path, "item"), _ids(frame.iloc[:, 1], path, "category")
    known = item_map.encode(items)
    codes = pd.factorize(categories[known >= 0])[0] + 1
    item_categories = np.zeros(len(item_map), dtype=np.int64)
    item_categories[known[known >= 0]] = codes
    return item_categories


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
