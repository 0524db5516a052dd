"""`--train`/`--test` given SR-GNN-style pickles: every accepted shape loads (small pickles built from real data),
every other shape fails with an error naming the file."""

from __future__ import annotations

import gzip
import pickle
import re
from functools import cache

import numpy as np
import pytest

from stream_app.settings import get_settings
from training.data.click_log import ClickLog, DataError
from training.data.datasets import custom_dataset, load_dataset
from training.data.pickles import load_pickle_restricted, read_srgnn_test
from training.data.readers import read_event_log
from training.retrain import build_parser, load_logs

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
    assert n0 >= 2
    other_id = ids[:1] + [ids[0] + 1] + ids[2:]  # the first session changes id mid-chain
    return [
        ({"sessions": seqs}, "expected a list of sessions (lists of item ids), an SR-GNN (inputs, targets) pair, "
                             "or a (session ids, inputs, targets, timestamps) tuple; got a dict"),
        ((inputs, targets, targets), "; got a tuple of 3"),
        ((inputs, targets[:-1]), "; got a tuple of 2"),
        ((inputs, "targets"), "; got a tuple of 2"),
        (7, "; got a int"),
        ([["a", "b"]], "session 0: expected a non-empty list of ints, got ['a', 'b']"),
        ([[1, 2], []], "session 1: expected a non-empty list of ints"),
        ((inputs[:1], targets[:1]), "sample 0: the file ends inside this session's prefix chain (1 of 5 samples)"),
        ((ids, t_inputs, t_targets, [str(t) for t in times]), "sample 0: expected an int or str session id and a "
                                                              "number timestamp"),
        ((other_id, t_inputs, t_targets, times), f"sample 1: session id {ids[0] + 1} differs from {ids[0]}"),
        ((ids[:n0] * 2, t_inputs[:n0] * 2, t_targets[:n0] * 2, times[:n0] * 2),
         f"sample {n0}: session id '{ids[0]}' already names an earlier session"),
    ]


@pytest.mark.parametrize("case", range(11))
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
