"""Click logs from pickled session lists and SR-GNN's published splits, unpickled without running any code."""

from __future__ import annotations

import gzip
import pickle
from collections import Counter
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
        except pickle.UnpicklingError as e:
            raise DataError(f"{path.name}: {e}") from e
        except Exception as e:  # bytes that are not a pickle fail in many ways (EOFError, ValueError, ...)
            raise DataError(f"{path.name}: not a readable pickle: {type(e).__name__}: {e}") from e


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

    - a list of sessions (`all_train_seq.txt`): in file order, no time;
    - an (inputs, targets) pair of prefix-augmented samples (`train.txt`, `test.txt`), where a sample
      (s[:k], s[k]) is a session s's k-click prefix and its next click (`_pair_sessions`): the sessions are
      rebuilt, in file order, no time;
    - a (session ids, inputs, targets, timestamps) tuple, the same samples with each one's session id and time
      (`_timed_samples_log`): each session is its longest sample, in time order.

    Session ids are the file's own (as text) or, where it names none, `{id_prefix}0`, `{id_prefix}1`, ...
    Any other shape, and any sample that does not fit its session: `DataError` naming the file and the sample."""
    path = Path(path)
    data = load_pickle_restricted(path)
    if isinstance(data, list):
        return _sequences_log(_checked_sessions(data, path), id_prefix, path)
    if _is_samples(data, 2):
        return _sequences_log(_pair_sessions(*data, path), id_prefix, path)
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


class _SampleError(DataError):
    """A sample that does not fit its session; `sample` says how far a reading of the file got."""

    def __init__(self, path: Path, sample: int, what: str):
        super().__init__(f"{path.name}: sample {sample}: {what}")
        self.sample = sample


def _rebuilt_sessions(inputs: list, targets: list, path: Path, shortest: int = 1) -> tuple[list[list[int]], list[int]]:
    """The sessions of prefix-augmented samples grouped by session, longest first (SR-GNN's own order), each
    session's inputs going down to `shortest` clicks; and the index of each one's first sample."""
    sessions, starts, j = [], [], 0
    while j < len(inputs):
        first = inputs[j]
        if not (_is_int_list(first) and type(targets[j]) is int):
            raise _SampleError(path, j, "expected a non-empty list of ints and an int target")
        length = len(first) + 1
        n = length - shortest  # samples of this session: inputs of len(first) down to `shortest` clicks
        if n < 1:
            raise _SampleError(path, j, f"a {len(first)}-click input where every session goes down to {shortest}")
        if j + n > len(inputs):
            raise _SampleError(path, j, f"the file ends inside this session's prefix chain "
                                        f"({len(inputs) - j} of {n} samples)")
        session = [*first, targets[j]]
        for i in range(2, n + 1):  # sample j+i-1 must be (session[:-i], session[-i])
            if inputs[j + i - 1] != session[:-i] or targets[j + i - 1] != session[-i]:
                raise _SampleError(path, j + i - 1, f"breaks the prefix chain of the session starting at sample {j}")
        sessions.append(session)
        starts.append(j)
        j += n
    return sessions, starts


def _pair_sessions(inputs: list, targets: list, path: Path) -> list[list[int]]:
    """The sessions of an (inputs, targets) pair of prefix-augmented samples, which names no sessions.

    A file either holds every session's one-click prefix (SR-GNN's own) or none (then sessions of two clicks
    have no sample at all). Samples grouped by session, longest first (SR-GNN's) or longest last, are read by
    position, sessions in file order: `read_srgnn_test` reads SR-GNN's files the same way. Samples of sessions
    interleaved are read by counting: the samples (s[:k], s[k]) of all sessions determine which sessions there are
    (for every prefix, as many sessions go on past it as samples extend it; the others end there), though no
    longer which sample is whose; sessions are then in the order their longest sample first appears.
    Where no reading fits, the error is that of the reading that got furthest into the file."""
    for j, (seq, target) in enumerate(zip(inputs, targets)):
        if not (_is_int_list(seq) and type(target) is int):
            raise _SampleError(path, j, "expected a non-empty list of ints and an int target")
    shortest = 1 if any(len(seq) == 1 for seq in inputs) else 2
    errors = []
    for read in (_rebuilt_sessions, _rebuilt_longest_last):
        try:
            return read(inputs, targets, path, shortest)[0]
        except _SampleError as e:
            errors.append(e)
    try:
        return _counted_sessions(inputs, targets, path, shortest)
    except _SampleError as e:
        raise max([*errors, e], key=lambda error: error.sample) from None  # ties: the first reading's


def _rebuilt_longest_last(inputs: list, targets: list, path: Path, shortest: int) -> tuple[list[list[int]], list[int]]:
    """As `_rebuilt_sessions`, each session's samples from its `shortest`-click input up to its longest."""
    sessions, starts, j = [], [], 0
    while j < len(inputs):
        if len(inputs[j]) != shortest:
            raise _SampleError(path, j, f"starts a session with a {len(inputs[j])}-click input (longest last: "
                                        f"{shortest})")
        k = j
        while k + 1 < len(inputs) and len(inputs[k + 1]) == len(inputs[k]) + 1:
            if inputs[k + 1] != [*inputs[k], targets[k]]:
                raise _SampleError(path, k + 1, f"breaks the prefix chain of the session starting at sample {j}")
            k += 1
        sessions.append([*inputs[k], targets[k]])
        starts.append(j)
        j = k + 1
    return sessions, starts


def _counted_sessions(inputs: list, targets: list, path: Path, shortest: int) -> list[list[int]]:
    """Interleaved samples without session ids: the sessions their prefix counts determine (`_pair_sessions`)."""
    seqs = [(*seq, target) for seq, target in zip(inputs, targets)]
    count = Counter(seqs)
    extended = Counter()
    for j, seq in enumerate(seqs):
        if len(seq) > shortest + 1:
            prefix = seq[:-1]
            extended[prefix] += 1
            if extended[prefix] > count[prefix]:
                what = "of" if count[prefix] else "(none) of"
                raise _SampleError(path, j, f"breaks the prefix chain: more samples extend its {len(prefix)}-click "
                                            f"prefix than there are samples {what} that prefix")
    ending = {seq: count[seq] - extended[seq] for seq in count}
    sessions = []
    for seq in seqs:
        if ending[seq]:
            ending[seq] -= 1
            sessions.append(list(seq))
    return sessions


def _timed_samples_log(ids: list, inputs: list, targets: list, timestamps: list, path: Path) -> ClickLog:
    """Samples that name their session: grouped or interleaved, in any order, with or without one-click
    prefixes (or any other sample of a session). Each session is its longest sample's input and target; every
    other sample of the session must be a prefix of it (the k-click input and the (k+1)th click), one per
    length. Ids are compared as text.

    Times: a sample's timestamp is the time of its target click (click k+1 of a k-click input), or one time
    per session repeated on every sample; both read the same way. A click no sample predicts (the first
    click; the second where one-click prefixes are left out; any other whose sample is missing) gets the time
    of the next click that has one: the earliest time the file gives that part of the session. Along a
    session, times must not go back. Sessions are in the order of their first click's time (ties: the order
    in which the file first names them)."""
    groups: dict[str, list[int]] = {}
    for j, (sid, seq, target, t) in enumerate(zip(ids, inputs, targets, timestamps)):
        if not (_is_int_list(seq) and type(target) is int):
            raise _SampleError(path, j, "expected a non-empty list of ints and an int target")
        if type(sid) not in (int, str) or type(t) not in (int, float) or not np.isfinite(t):
            raise _SampleError(path, j, f"expected an int or str session id and a number timestamp, "
                                        f"got {sid!r:.40} and {t!r:.40}")
        groups.setdefault(str(sid), []).append(j)
    sessions, session_times = [], []
    for name, samples in groups.items():
        longest = max(samples, key=lambda j: len(inputs[j]))  # the first of the longest
        session = [*inputs[longest], targets[longest]]
        by_length: dict[int, int] = {}
        for j in samples:
            k = len(inputs[j])
            if inputs[j] != session[:k] or targets[j] != session[k]:
                raise _SampleError(path, j, f"session {name!r}: not a prefix of the session's longest sample "
                                            f"(sample {longest})")
            if k in by_length:
                raise _SampleError(path, j, f"session {name!r}: a second sample with a {k}-click input (the first: "
                                            f"sample {by_length[k]}); an id names one session")
            by_length[k] = j
        times = [0.0] * len(session)
        later = None  # the sample that times the next click that has one
        for k in range(len(session) - 1, -1, -1):
            j = by_length.get(k)  # the sample whose target is click k (its input: the k clicks before)
            if j is not None:
                if later is not None and timestamps[j] > timestamps[later]:
                    raise _SampleError(path, later, f"session {name!r}: time {timestamps[later]} is before "
                                                    f"{timestamps[j]}, that of its shorter prefix (sample {j})")
                later = j
            times[k] = float(timestamps[later])
        sessions.append((name, session))
        session_times.append(times)
    order = np.argsort(np.asarray([times[0] for times in session_times]), kind="stable")
    names = np.asarray([sessions[k][0] for k in order], dtype=object)
    lengths = np.fromiter((len(sessions[k][1]) for k in order), np.int64, count=len(order))
    items = np.fromiter(chain.from_iterable(sessions[k][1] for k in order), np.int64, count=int(lengths.sum()))
    times = np.fromiter(chain.from_iterable(session_times[k] for k in order), np.float64, count=len(items))
    return ClickLog(np.repeat(names, lengths), items.astype(str).astype(object), times, str(path))


def _is_int_list(seq) -> bool:
    return isinstance(seq, list) and len(seq) > 0 and all(type(x) is int for x in seq)


def _sequences_log(seqs: list[list[int]], id_prefix: str, path: Path) -> ClickLog:
    """Time-less sources: sessions in file order, ids `{id_prefix}0`, `{id_prefix}1`, ..."""
    lengths = np.fromiter(map(len, seqs), np.int64, count=len(seqs))
    names = np.char.add(id_prefix, np.arange(len(seqs)).astype(str)).astype(object)
    items = np.fromiter(chain.from_iterable(seqs), np.int64, count=int(lengths.sum()))
    return ClickLog(np.repeat(names, lengths), items.astype(str).astype(object), None, str(path))


