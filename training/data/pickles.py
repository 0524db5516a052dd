"""Click logs from pickled session lists and SR-GNN's published splits, unpickled without running any code."""

from __future__ import annotations

import gzip
import pickle
from itertools import chain
from pathlib import Path

import numpy as np

from training.data.click_log import ClickLog, DataError


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


