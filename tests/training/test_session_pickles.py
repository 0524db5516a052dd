"""`--train`/`--test` given SR-GNN-style pickles: every accepted shape loads (small pickles built from real data),
every other shape fails with an error naming the file, and the command says so in one line (exit status 2)."""

from __future__ import annotations

import gzip
import itertools
import pickle
import re
from functools import cache

import numpy as np
import pytest

from stream_app.settings import get_settings
from training.data.click_log import ClickLog, DataError
from training.data.datasets import custom_dataset, load_dataset
from training.data.pickles import load_pickle_restricted, read_session_pickle, read_srgnn_test
from training.data.readers import read_event_log
from training.retrain import build_parser, load_logs
from training.retrain import main as retrain

DATA = get_settings().data_dir
RSC15_TEST = DATA / "yoochoose_rsc15_100k/yoochoose-clicks-100k_test.txt.gz"


@cache
def digi_train_seqs(n: int = 40) -> list[list[int]]:
    return load_pickle_restricted(DATA / "diginetica_srgnn/all_train_seq.txt.gz")[:n]


@cache
def digi_test_pair() -> tuple[list, list]:
    """The first three sessions of the real SR-GNN Diginetica test file, as its samples."""
    inputs, targets = load_pickle_restricted(DATA / "diginetica_srgnn/test.txt.gz")
    j = 0
    for _ in range(3):
        j += len(inputs[j])
    return inputs[:j], targets[:j]


@cache
def rsc15_timed() -> tuple[ClickLog, tuple[list, list, list, list]]:
    """Real YOOCHOOSE test sessions (2+ clicks, the first 30) and their (ids, inputs, targets, timestamps)
    samples, each sample carrying its session's id and first-click time."""
    log = read_event_log(RSC15_TEST)
    offsets = log.session_offsets()
    keep = [s for s in range(log.n_sessions) if offsets[s + 1] - offsets[s] >= 2][:30]
    ids, inputs, targets, times, rows = [], [], [], [], []
    for s in keep:
        a, b = offsets[s], offsets[s + 1]
        items = [int(x) for x in log.item_ids[a:b]]
        rows.extend(range(a, b))
        for i in range(1, len(items)):
            ids.append(int(log.session_ids[a]))
            inputs.append(items[:-i])
            targets.append(items[-i])
            times.append(float(log.times[a]))
    rows = np.array(rows)
    first_time = {sid: t for sid, t in zip(log.session_ids[rows][::-1], log.times[rows][::-1])}
    expected = ClickLog(log.session_ids[rows], log.item_ids[rows],
                        np.array([first_time[sid] for sid in log.session_ids[rows]]), str(RSC15_TEST))
    return expected, (ids, inputs, targets, times)


def write(path, obj, compress=False, protocol=pickle.DEFAULT_PROTOCOL):
    payload = pickle.dumps(obj, protocol=protocol)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def load_custom(train, test) -> tuple[ClickLog, ClickLog]:
    return load_dataset(custom_dataset(train, test))


def same_sessions(log: ClickLog, sessions: list[list[int]]) -> None:
    offsets = log.session_offsets()
    assert [log.item_ids[a:b].astype(int).tolist() for a, b in zip(offsets[:-1], offsets[1:])] == sessions


@pytest.mark.parametrize("compress, protocol", [(False, pickle.DEFAULT_PROTOCOL), (True, pickle.DEFAULT_PROTOCOL),
                                                (False, 0), (True, 1)])
def test_train_list_and_test_pair(tmp_path, compress, protocol):
    train = write(tmp_path / "train.data", digi_train_seqs(), compress, protocol)  # names say nothing of format
    test = write(tmp_path / "test.data", digi_test_pair(), compress, protocol)
    train_log, test_log = load_custom(train, test)
    same_sessions(train_log, digi_train_seqs())
    assert train_log.session_ids[0] == "0" and train_log.times is None
    reference = read_srgnn_test(test)  # the registered SR-GNN data sets' reader: the same sessions
    assert test_log.item_ids.tolist() == reference.item_ids.tolist()
    assert test_log.session_ids.tolist() == reference.session_ids.tolist()
    assert test_log.n_sessions == 3


def test_train_as_samples_pair(tmp_path):
    inputs, targets = digi_test_pair()
    pair = write(tmp_path / "pair.pkl", (inputs, targets))
    train_log, test_log = load_custom(pair, pair)
    assert train_log.item_ids.tolist() == test_log.item_ids.tolist() == read_srgnn_test(pair).item_ids.tolist()
    assert (train_log.session_ids[0], test_log.session_ids[0]) == ("0", "test-0")


def test_test_as_timed_samples(tmp_path):
    expected, samples = rsc15_timed()
    _, test_log = load_custom(write(tmp_path / "train.pkl", digi_train_seqs()), write(tmp_path / "test.pkl", samples))
    assert test_log.session_ids.tolist() == expected.session_ids.tolist()  # the file's own ids, as text
    assert test_log.item_ids.tolist() == expected.item_ids.tolist()
    np.testing.assert_array_equal(test_log.times, expected.times)


def test_timed_samples_are_put_in_time_order(tmp_path):
    expected, (ids, inputs, targets, times) = rsc15_timed()
    chains, j = [], 0
    while j < len(inputs):
        n = len(inputs[j])
        chains.append([(ids[k], inputs[k], targets[k], times[k]) for k in range(j, j + n)])
        j += n
    flipped = [sample for chain in reversed(chains) for sample in chain]
    reversed_samples = tuple(list(column) for column in zip(*flipped))
    _, test_log = load_custom(write(tmp_path / "train.pkl", digi_train_seqs()),
                              write(tmp_path / "test.pkl", reversed_samples))
    assert test_log.session_ids.tolist() == expected.session_ids.tolist()
    assert np.all(np.diff(test_log.times) >= 0)


def test_retrain_cli_reads_pickles(tmp_path):
    args = build_parser().parse_args(["--train", str(write(tmp_path / "a", digi_train_seqs(), True)),
                                      "--test", str(write(tmp_path / "b", digi_test_pair(), True))])
    train, test, name = load_logs(args)
    assert (train.n_sessions, test.n_sessions, name) == (40, 3, "custom:a")


def bad_shapes():
    seqs = digi_train_seqs(5)
    inputs, targets = digi_test_pair()
    expected, (ids, t_inputs, t_targets, times) = rsc15_timed()
    n0 = len(t_inputs[0])  # the first session's samples
    assert n0 >= 3
    other_id = ids[:1] + [ids[n0]] + ids[2:]  # a sample of the first session names the second
    return [
        ({"sessions": seqs}, "expected a list of sessions (lists of item ids), an SR-GNN (inputs, targets) pair, "
                             "or a (session ids, inputs, targets, timestamps) tuple; got a dict"),
        ((inputs, targets, targets), "; got a tuple of 3"),
        ((inputs, targets[:-1]), "; got a tuple of 2"),
        ((inputs, "targets"), "; got a tuple of 2"),
        (7, "; got a int"),
        ([["a", "b"]], "session 0: expected a non-empty list of ints, got ['a', 'b']"),
        ([[1, 2], []], "session 1: expected a non-empty list of ints"),
        ((inputs[:1], targets[:1]), "sample 0: the file ends inside this session's prefix chain (1 of 4 samples)"),
        ((ids, t_inputs, t_targets, [str(t) for t in times]), "sample 0: expected an int or str session id and a "
                                                              "number timestamp"),
        ((other_id, t_inputs, t_targets, times),
         f"sample 1: session '{ids[n0]}': not a prefix of the session's longest sample (sample {n0})"),
        ((ids[:n0] * 2, t_inputs[:n0] * 2, t_targets[:n0] * 2, times[:n0] * 2),
         f"sample {n0}: session '{ids[0]}': a second sample with a {len(t_inputs[0])}-click input (the first: "
         f"sample 0); an id names one session"),
        ((ids, t_inputs, t_targets, times[:1] + [times[0] - 1] + times[2:]),  # a prefix earlier than a shorter one
         f"sample 1: session '{ids[0]}': time {times[0] - 1} is before {times[0]}, that of its shorter prefix "
         f"(sample 2)"),
        ((ids, t_inputs, t_targets[:-1], times), "; got a tuple of 4"),  # lengths differ
    ]


@pytest.mark.parametrize("case", range(13))
@pytest.mark.parametrize("side", ["train", "test"])
def test_other_shapes_fail_naming_the_file(tmp_path, case, side):
    obj, message = bad_shapes()[case]
    good = write(tmp_path / "good.pkl", digi_train_seqs())
    bad = write(tmp_path / f"my_{side}.pkl.gz", obj, compress=True)
    files = (bad, good) if side == "train" else (good, bad)
    with pytest.raises(DataError, match=f"^my_{side}.pkl.gz: .*" + re.escape(message)):
        load_custom(*files)


def test_event_logs_still_read_as_event_logs(tmp_path):
    train, test = load_custom(RSC15_TEST, RSC15_TEST)
    assert train.n_clicks == read_event_log(RSC15_TEST).n_clicks and train.times is not None


# --- Published splits: every shape of prefix-augmented samples reads to the same sessions ---

@cache
def rsc15_sessions(n: int = 40) -> tuple[tuple[int, list[int], list[float]], ...]:
    """The first n real YOOCHOOSE test sessions of 2+ clicks, in time order: (id, items, click times)."""
    log = read_event_log(RSC15_TEST)
    offsets = log.session_offsets()
    spans = [(a, b) for a, b in itertools.pairwise(offsets) if b - a >= 2][:n]
    return tuple((int(log.session_ids[a]), log.item_ids[a:b].astype(int).tolist(), log.times[a:b].tolist())
                 for a, b in spans)


def published(sessions, *, ids: bool, longest_first: bool, one_click: bool, interleaved: bool,
              session_time: bool = False):
    """`sessions` as a published split writes them: samples (s[:k], s[k]) for k from 1 (or 2: one-click prefixes
    left out) to len(s) - 1, longest first or last, grouped by session or interleaved (round robin); as an
    (inputs, targets) pair, or (ids, inputs, targets, timestamps) with each sample's target click time (or
    the session's first click time on all of them)."""
    chains = []
    for sid, items, times in sessions:
        chain = [(sid, items[:k], items[k], times[0] if session_time else times[k])
                 for k in range(1 if one_click else 2, len(items))]
        chains.append(chain[::-1] if longest_first else chain)
    rounds = itertools.zip_longest(*chains) if interleaved else chains
    columns = [list(column) for column in zip(*(row for rows in rounds for row in rows if row is not None))]
    return tuple(columns) if ids else (columns[1], columns[2])


def as_read(log: ClickLog) -> list[tuple[str, list[int], list[float] | None]]:
    offsets = log.session_offsets()
    return [(log.session_ids[a], log.item_ids[a:b].astype(int).tolist(),
             None if log.times is None else log.times[a:b].tolist()) for a, b in itertools.pairwise(offsets)]


SHAPES = [dict(zip(("interleaved", "longest_first", "one_click"), flags))
          for flags in itertools.product((False, True), repeat=3)]


def shape_id(shape: dict) -> str:
    return "-".join(("interleaved" if shape["interleaved"] else "grouped",
                     "longest_first" if shape["longest_first"] else "longest_last",
                     "one_click" if shape["one_click"] else "no_one_click"))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_timed_samples_of_every_published_shape_read_to_the_same_sessions(tmp_path, shape, compress):
    sessions = rsc15_sessions()
    first = 1 if shape["one_click"] else 2  # the first click a sample predicts
    kept = [(str(sid), items, [times[max(k, first)] for k in range(len(items))])  # earlier clicks: its time
            for sid, items, times in sessions if len(items) > first]
    expected = sorted(kept, key=lambda session: session[2][0])  # by the first click's time (stable)
    log = read_session_pickle(write(tmp_path / "test.txt", published(sessions, ids=True, **shape), compress))
    assert as_read(log) == expected
    starts = log.times[log.session_offsets()[:-1]]
    assert np.all(np.diff(starts) >= 0)  # ClickLog's invariant


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_timed_samples_with_one_time_per_session(tmp_path, shape):
    sessions = rsc15_sessions()
    first = 1 if shape["one_click"] else 2
    expected = [(str(sid), items, [times[0]] * len(items)) for sid, items, times in sessions if len(items) > first]
    samples = published(sessions, ids=True, session_time=True, **shape)
    assert as_read(read_session_pickle(write(tmp_path / "test.txt", samples))) == expected


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_sample_pairs_of_every_published_shape_read_to_the_same_sessions(tmp_path, shape, compress):
    """Without ids, grouped samples give the sessions in file order; interleaved ones give the same sessions,
    in the order their longest samples appear."""
    sessions = rsc15_sessions()
    first = 1 if shape["one_click"] else 2
    expected = [items for _, items, _ in sessions if len(items) > first]
    log = read_session_pickle(write(tmp_path / "test.txt", published(sessions, ids=False, **shape), compress), "t-")
    read = [items for _, items, _ in as_read(log)]
    assert log.times is None and log.session_ids[0] == "t-0"
    if shape["interleaved"]:
        assert sorted(read) == sorted(expected)
        if shape["longest_first"]:  # round robin, longest first: the longest samples come in session order
            assert read == expected
    else:
        assert read == expected


def test_real_srgnn_test_file_reads_as_before_in_every_published_shape(tmp_path):
    """The real Diginetica test file reads as `read_srgnn_test` reads it; re-published as the issue found it
    (ids and one time per session, grouped, longest first, one-click prefixes left out), the same sessions."""
    path = DATA / "diginetica_srgnn/test.txt.gz"
    reference = read_srgnn_test(path)
    assert (reference.n_sessions, reference.n_clicks) == (15_963, 76_821)
    log = read_session_pickle(path, "test-")
    assert log.session_ids.tolist() == reference.session_ids.tolist()
    assert log.item_ids.tolist() == reference.item_ids.tolist()
    sessions = [(s, [int(x) for x in items], [float(s)] * len(items))
                for s, items in enumerate(reference.sessions_as_ids())]
    shape = dict(interleaved=False, longest_first=True, one_click=False)
    timed = read_session_pickle(write(tmp_path / "test.txt", published(sessions, ids=True, **shape), True))
    expected = [(str(s), items, times) for s, items, times in sessions if len(items) > 2]
    assert as_read(timed) == expected


def test_interleaved_pairs_that_break_a_chain_name_the_sample(tmp_path):
    sessions = rsc15_sessions()
    inputs, targets = published(sessions, ids=False, interleaved=True, longest_first=False, one_click=True)
    j = next(j for j, seq in enumerate(inputs) if len(seq) == 3)
    inputs[j] = inputs[j][:1] + [inputs[j][1] + 10**9] + inputs[j][2:]  # its 2-click prefix is no sample's
    with pytest.raises(DataError, match=rf"^test.txt: sample {j}: breaks the prefix chain: more samples extend its "
                                        r"3-click prefix than there are samples \(none\) of that prefix$"):
        read_session_pickle(write(tmp_path / "test.txt", (inputs, targets)))


@pytest.mark.parametrize("payload", [b"\x80\x04\x95garbage", b"\x80\x04K\x01", gzip.compress(b"(lp0\nI1\n")[:-6]])
def test_bytes_that_are_no_pickle_are_data_errors(tmp_path, payload):
    (tmp_path / "bad.pkl").write_bytes(payload)
    with pytest.raises(DataError, match="^bad.pkl: "):
        read_session_pickle(tmp_path / "bad.pkl")


def test_retrain_says_what_is_wrong_with_the_data_in_one_line(tmp_path, capsys):
    """In process (the fast lane); tests/training/test_retrain.py runs the command itself."""
    _, (ids, inputs, targets, times) = rsc15_timed()
    bad = write(tmp_path / "bad.pkl", (ids, inputs, targets[:1] + [targets[1] + 1] + targets[2:], times))
    with pytest.raises(SystemExit) as exit_:
        retrain(["--train", str(bad), "--test", str(bad), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and not (tmp_path / "out").exists()
    assert err.count("\n") == 1 and err.startswith("python -m training.retrain: error: bad.pkl: sample 1: session ")
