"""Data loading on the real shared files: counts from each PROVENANCE.md, the ClickLog invariant, and
every DataError on small corrupted copies of real rows."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
from datetime import UTC, datetime
from functools import cache

import numpy as np
import pandas as pd
import pytest

from stream_app.settings import get_settings
from tests.real_slices import yoochoose_slice
from training.data.click_log import ClickLog, DataError, ItemMap, Sessions, encode_sessions, item_popularity
from training.data.datasets import custom_dataset, dataset_names, load_dataset
from training.data.pickles import load_pickle_restricted, read_srgnn_test, read_srgnn_train
from training.data.readers import read_event_log

DATA = get_settings().data_dir
RSC15 = "yoochoose_rsc15_100k/yoochoose-clicks-100k_{}.txt.gz"
RSC15_TEST = RSC15.format("test")
DIGINETICA_RAW = "diginetica/sample_train-item-views.csv.gz"
DIGINETICA_KW = dict(session_key="session_id", item_key="item_id", time_key="timeframe", time_unit="ms",
                     date_key="eventdate")


@cache
def rsc15(part: str) -> ClickLog:
    return read_event_log(DATA / RSC15.format(part))


@cache
def dataset(name: str) -> tuple[ClickLog, ClickLog]:
    return load_dataset(name)


def real_lines(rel: str, n: int) -> list[str]:
    """Header plus the first n data lines of a real file."""
    with gzip.open(DATA / rel, "rt") as f:
        return [next(f) for _ in range(n + 1)]


def raw_frame(rel: str, sep: str = "\t") -> pd.DataFrame:
    return pd.read_csv(DATA / rel, sep=sep, dtype=str)


def assert_invariant(log: ClickLog) -> None:
    """Sessions contiguous, clicks in time order, sessions in first-click order."""
    offsets = log.session_offsets()
    assert offsets.dtype == np.int64 and offsets[0] == 0 and offsets[-1] == log.n_clicks
    assert len(set(log.session_ids)) == log.n_sessions
    assert log.session_ids.dtype == object and log.item_ids.dtype == object
    assert isinstance(log.item_ids[0], str)
    if log.times is not None:
        same = log.session_ids[1:] == log.session_ids[:-1]
        assert (np.diff(log.times)[same] >= 0).all()
        assert (np.diff(log.times[offsets[:-1]]) >= 0).all()


def assert_same_log(a: ClickLog, b: ClickLog) -> None:
    np.testing.assert_array_equal(a.session_ids, b.session_ids)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_array_equal(a.times, b.times)


def tsv(tmp_path, frame: pd.DataFrame):
    path = tmp_path / "slice.tsv"
    frame.to_csv(path, sep="\t", index=False)
    return path


def utc(t: float, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return datetime.fromtimestamp(t, UTC).strftime(fmt)


# --- yoochoose_rsc15_100k (TSV with real times) ---

@pytest.mark.parametrize("part, rows, sessions, items, first, last", [
    ("train_full", 70_278, 17_794, 2_933, "2014-04-01 01:02", "2014-04-07 00:43"),
    ("test", 13_568, 3_416, 1_771, "2014-04-07 00:49", "2014-04-08 00:50"),
    ("train_tr", 53_254, 13_629, 2_873, "2014-04-01 01:02", "2014-04-06 00:30"),
    ("train_valid", 16_539, 4_084, 2_029, "2014-04-06 00:19", "2014-04-07 00:43"),
])
def test_rsc15_matches_provenance(part, rows, sessions, items, first, last):
    log = rsc15(part)
    assert (log.n_clicks, log.n_sessions, len(set(log.item_ids))) == (rows, sessions, items)
    assert tuple(map(utc, log.time_range())) == (first, last)
    assert_invariant(log)


def test_rsc15_times_are_the_stored_seconds():
    log = rsc15("test")
    assert log.times[log.session_ids == "1"][0] == 1396860669.277  # PROVENANCE's example click


def test_clicks_within_a_session_keep_file_order():
    raw = raw_frame(RSC15.format("train_full"))  # has 4 within-session time ties
    log = rsc15("train_full")
    ours = pd.DataFrame({"SessionId": log.session_ids, "ItemId": log.item_ids})
    merged = ours.assign(rank=ours.groupby("SessionId").cumcount()).merge(
        raw.assign(rank=raw.groupby("SessionId").cumcount()), on=["SessionId", "rank"], suffixes=("", "_raw"))
    assert len(merged) == log.n_clicks and (merged.ItemId == merged.ItemId_raw).all()


def test_interleaved_sessions_are_grouped(tmp_path):
    raw = raw_frame(RSC15.format("train_full")).iloc[:2000]
    raw.to_csv(tmp_path / "by_session.tsv", sep="\t", index=False)
    stream = raw.sort_values("Time", key=lambda t: t.astype(float), kind="stable")  # the real click stream
    stream.to_csv(tmp_path / "by_time.tsv", sep="\t", index=False)
    assert (stream.SessionId.to_numpy()[1:] != stream.SessionId.to_numpy()[:-1]).sum() > raw.SessionId.nunique()
    assert_same_log(read_event_log(tmp_path / "by_time.tsv"), read_event_log(tmp_path / "by_session.tsv"))


@pytest.mark.parametrize("sep", [",", ";"])
def test_separator_is_sniffed(tmp_path, sep):
    raw = raw_frame(RSC15_TEST).iloc[:500]
    raw.to_csv(tmp_path / "slice.csv", sep=sep, index=False)
    assert_same_log(read_event_log(tmp_path / "slice.csv"), read_event_log(tsv(tmp_path, raw)))


def test_parquet_round_trip(tmp_path):
    raw = raw_frame(RSC15.format("train_full")).iloc[:3000]
    expected = read_event_log(tsv(tmp_path, raw))
    typed = raw.astype({"SessionId": "int64", "ItemId": "int64", "Time": "float64"})
    for name, frame in [("text.parquet", raw), ("typed.parquet", typed)]:
        frame.to_parquet(tmp_path / name)
        assert_same_log(read_event_log(tmp_path / name), expected)  # ids come back as the same strings


def test_head_sessions():
    log = rsc15("test")
    head = log.head_sessions(5)
    assert head.n_sessions == 5 and head.n_clicks == log.session_offsets()[5]
    np.testing.assert_array_equal(head.item_ids, log.item_ids[:head.n_clicks])



def test_split_at_keeps_session_order_and_every_click_and_concat_undoes_it():
    train, _, _, _ = yoochoose_slice(train_sessions=200, test_sessions=1)
    earlier, later = train.split_at(150)
    assert (earlier.n_sessions, later.n_sessions) == (150, 50)
    np.testing.assert_array_equal(np.concatenate([earlier.items, later.items]), train.items)
    np.testing.assert_array_equal(later.lengths(), train.lengths()[150:])
    assert later.offsets[0] == 0 and earlier.offsets[-1] == len(earlier.items)
    joined = Sessions.concat([earlier, later])
    np.testing.assert_array_equal(joined.offsets, train.offsets)
    np.testing.assert_array_equal(joined.items, train.items)

# --- DataError on corrupted copies of real rows ---

def _corrupt(lines: list[str], row: int, column: int, value: str) -> list[str]:
    fields = lines[row].rstrip("\n").split("\t")
    fields[column] = value
    return [*lines[:row], "\t".join(fields) + "\n", *lines[row + 1:]]


@pytest.mark.parametrize("edit, message", [
    # rows 1-2 are session '1' (times 1396860669.277, 1396860886.998), rows 3-9 sessions '2' and '3'
    (lambda ls: _corrupt(ls, 2, 2, "1396860000.5"),
     "row 2: time goes backwards within session '1' (1396860000.5 < 1396860669.277)"),
    (lambda ls: _corrupt(ls, 3, 0, ""), "row 3: missing session id"),
    (lambda ls: _corrupt(ls, 4, 1, ""), "row 4: missing item id"),
    (lambda ls: _corrupt(ls, 5, 2, "soon"), "row 5: unparsable time 'soon'"),
    (lambda ls: _corrupt(ls, 6, 2, "inf"), "row 6: unparsable time 'inf'"),
    (lambda ls: [*ls[:4], "\n", *ls[4:]], "row 4: missing session id"),  # a blank line keeps its row number
    (lambda ls: [ls[0].replace("ItemId", "Item"), *ls[1:]],
     "missing column(s) ItemId; columns present: SessionId, Item, Time"),
    (lambda ls: ls[:1], "no data rows"),
    (lambda ls: [], "No columns to parse"),
])
def test_event_log_errors_name_file_and_row(tmp_path, edit, message):
    path = tmp_path / "clicks.tsv"
    path.write_text("".join(edit(real_lines(RSC15_TEST, 9))))
    with pytest.raises(DataError, match="^" + re.escape(f"clicks.tsv: {message}")):
        read_event_log(path)


def test_backwards_row_is_the_file_row_when_interleaved(tmp_path):
    stream = raw_frame(RSC15_TEST).iloc[:300]
    stream = stream.sort_values("Time", key=lambda t: t.astype(float), kind="stable").reset_index(drop=True)
    later = stream.SessionId.duplicated()  # clicks that are not their session's first
    row = int(np.flatnonzero(later)[10])
    session = stream.SessionId[row]
    stream.loc[row, "Time"] = "1396800000.0"
    stream.to_csv(tmp_path / "stream.tsv", sep="\t", index=False)
    message = f"stream.tsv: row {row + 1}: time goes backwards within session '{session}'"
    with pytest.raises(DataError, match="^" + re.escape(message)):
        read_event_log(tmp_path / "stream.tsv")


# --- Diginetica raw sample (timeframe offsets + eventdate) ---

def test_diginetica_raw_sample_loads_in_time_order():
    log = read_event_log(DATA / DIGINETICA_RAW, **DIGINETICA_KW)
    assert (log.n_clicks, log.n_sessions, len(set(log.item_ids))) == (12_391, 2_986, 7_139)
    lengths = np.diff(log.session_offsets())
    assert ((lengths == 1).sum(), lengths.max()) == (933, 54)
    assert_invariant(log)
    assert tuple(utc(t, "%Y-%m-%d") for t in log.time_range()) == ("2016-01-03", "2016-06-01")
    # The file lists a session's views in no time order; ours follow timeframe.
    raw = raw_frame(DIGINETICA_RAW, sep=";")
    raw = raw.assign(tf=raw.timeframe.astype(int)).sort_values(["session_id", "tf"], kind="stable")
    expected = raw.groupby("session_id").item_id.agg(list)
    ours = pd.Series(log.item_ids).groupby(log.session_ids).agg(list)
    assert ours.sort_index().equals(expected.sort_index())


def test_diginetica_session_across_midnight_keeps_its_duration():
    log = read_event_log(DATA / DIGINETICA_RAW, **DIGINETICA_KW)
    times = log.times[log.session_ids == "2205"]  # eventdate 2016-05-31 then 2016-06-01
    assert times[-1] - times[0] == pytest.approx((930_301 - 37_669) / 1000)
    assert utc(times[0], "%Y-%m-%d") == "2016-05-31"


def test_diginetica_bad_date_names_the_row(tmp_path):
    lines = real_lines(DIGINETICA_RAW, 5)
    lines[3] = lines[3].replace("2016-05-09", "2016-13-09")
    path = tmp_path / "views.csv"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=re.escape("views.csv: row 3: unparsable date '2016-13-09'")):
        read_event_log(path, **DIGINETICA_KW)


# --- SR-GNN pickles ---

@pytest.mark.parametrize("name, train_counts, test_counts", [
    # (sessions, clicks, items), (samples, sessions, distinct input items)
    ("diginetica_srgnn", (186_670, 906_140, 43_097), (60_858, 15_963, 18_646)),
    ("yoochoose1_64_srgnn", (116_167, 486_026, 17_376), (55_898, 15_324, 6_054)),
])
def test_srgnn_matches_provenance(name, train_counts, test_counts):
    train, test = dataset(name)
    assert (train.n_sessions, train.n_clicks, len(set(train.item_ids))) == train_counts
    offsets = test.session_offsets()
    is_input = np.ones(test.n_clicks, dtype=bool)
    is_input[offsets[1:] - 1] = False
    assert (test.n_clicks - test.n_sessions, test.n_sessions, len(set(test.item_ids[is_input]))) == test_counts
    assert train.times is None and train.time_range() is None
    assert (train.session_ids[0], test.session_ids[-1]) == ("0", f"test-{test.n_sessions - 1}")
    assert_invariant(train)
    assert_invariant(test)


@pytest.mark.parametrize("name", ["diginetica_srgnn", "yoochoose1_64_srgnn"])
def test_srgnn_rebuilt_test_sessions_give_back_the_samples(name):
    inputs, targets = load_pickle_restricted(DATA / name / "test.txt.gz")
    test = dataset(name)[1]
    offsets = test.session_offsets()
    items = test.item_ids.astype(int).tolist()
    sessions = [items[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    samples = [(s[:-i], s[-i]) for s in sessions for i in range(1, len(s))]
    assert samples == list(zip(inputs, targets))


def test_restricted_unpickler_loads_plain_pickles(tmp_path):
    seqs = load_pickle_restricted(DATA / "diginetica_srgnn/all_train_seq.txt.gz")[:50]
    (tmp_path / "train.pkl").write_bytes(pickle.dumps(seqs))
    assert_same_log(read_srgnn_train(tmp_path / "train.pkl"), dataset("diginetica_srgnn")[0].head_sessions(50))


@pytest.mark.parametrize("compress", [False, True])
def test_restricted_unpickler_refuses_globals(tmp_path, compress):
    payload = pickle.dumps(os.system)
    (tmp_path / "evil.pkl").write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(DataError, match=r"^evil.pkl: refused global (posix|nt)\.system"):
        load_pickle_restricted(tmp_path / "evil.pkl")


def test_srgnn_train_empty_session_names_its_index(tmp_path):
    seqs = load_pickle_restricted(DATA / "diginetica_srgnn/all_train_seq.txt.gz")[:10]
    seqs[3] = []
    (tmp_path / "train.pkl").write_bytes(pickle.dumps(seqs))
    with pytest.raises(DataError, match=r"^train.pkl: session 3: expected a non-empty list of ints"):
        read_srgnn_train(tmp_path / "train.pkl")


@pytest.mark.parametrize("edit, message", [
    # The real file starts with a session of 6 items: samples 0-4, inputs of length 5 down to 1.
    (lambda i, t: (i, t[:2] + t[3:4] + t[3:]),
     "sample 2: breaks the prefix chain of the session starting at sample 0"),
    (lambda i, t: (i[:3] + [i[3][::-1]] + i[4:], t), "sample 3: breaks the prefix chain"),
    (lambda i, t: (i[:4], t[:4]), "sample 0: the file ends inside this session's prefix chain (4 of 5 samples)"),
    (lambda i, t: (i[:5] + [[]] + i[6:], t), "sample 5: expected a non-empty list of ints and an int target"),
])
def test_srgnn_test_chain_errors_name_the_sample(tmp_path, edit, message):
    inputs, targets = load_pickle_restricted(DATA / "diginetica_srgnn/test.txt.gz")
    n = 5 + len(inputs[5])  # the first two sessions
    inputs, targets = inputs[:n], targets[:n]
    assert [len(x) for x in inputs[:5]] == [5, 4, 3, 2, 1]
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps((inputs, targets)))
    assert read_srgnn_test(tmp_path / "ok.pkl").n_sessions == 2
    (tmp_path / "test.pkl").write_bytes(pickle.dumps(edit(inputs, targets)))
    with pytest.raises(DataError, match="^" + re.escape(f"test.pkl: {message}")):
        read_srgnn_test(tmp_path / "test.pkl")


# --- ItemMap, Sessions ---

def test_item_map_round_trip_and_unknown_ids(tmp_path):
    train, test = rsc15("train_tr"), rsc15("test")
    item_map = ItemMap.fit(train.item_ids)
    assert len(item_map) == 2_873 and item_map.ids[0] == train.item_ids[0]  # first appearance order
    np.testing.assert_array_equal(item_map.encode(item_map.ids), np.arange(len(item_map)))
    item_map.save(tmp_path / "items.json")
    assert json.loads((tmp_path / "items.json").read_text())[:2] == list(item_map.ids[:2])
    loaded = ItemMap.load(tmp_path / "items.json")
    np.testing.assert_array_equal(loaded.ids, item_map.ids)
    codes = loaded.encode(test.item_ids)
    assert codes.dtype == np.int64
    unknown = ~np.isin(test.item_ids.astype(str), train.item_ids.astype(str))
    assert unknown.sum() == 293  # clicks on the 43 test items that train_tr never saw
    np.testing.assert_array_equal(codes == -1, unknown)
    with pytest.raises(ValueError, match="unique"):
        ItemMap(["1", "1"])


@pytest.mark.parametrize("train_test", [
    lambda: (rsc15("train_tr"), rsc15("test")),
    lambda: dataset("yoochoose1_64_srgnn"),  # 369 test item ids are not in the 1/64 train part
])
def test_encode_sessions_drops_and_counts_unknown_items(train_test):
    train, test = train_test()
    item_map = ItemMap.fit(train.item_ids)
    sessions = encode_sessions(test, item_map)
    known = np.isin(test.item_ids.astype(str), train.item_ids.astype(str))
    assert sessions.n_dropped_clicks == (~known).sum() > 0
    np.testing.assert_array_equal(item_map.ids[sessions.items], test.item_ids[known])
    sessions_left = pd.Series(known).groupby(test.session_ids).any().sum()
    assert sessions.n_sessions == sessions_left < test.n_sessions
    assert sessions.offsets.dtype == np.int64 and (sessions.lengths() > 0).all()


def test_diginetica_srgnn_test_items_all_known():
    train, test = dataset("diginetica_srgnn")
    sessions = encode_sessions(test, ItemMap.fit(train.item_ids))
    assert (sessions.n_dropped_clicks, sessions.n_sessions) == (0, 15_963)


def test_item_popularity_counts_clicks():
    log = rsc15("train_full")
    item_map = ItemMap.fit(log.item_ids)
    popularity = item_popularity(encode_sessions(log, item_map), len(item_map))
    expected = pd.Series(log.item_ids).value_counts().reindex(item_map.ids).to_numpy()
    np.testing.assert_array_equal(popularity, expected)
    assert popularity.dtype == np.int64


# --- the registry ---

def test_dataset_registry():
    assert dataset_names() == ["yoochoose_rsc15_100k", "diginetica_srgnn", "yoochoose1_64_srgnn"]
    train, valid = load_dataset("yoochoose_rsc15_100k", validation=True)
    assert (train.n_clicks, valid.n_clicks) == (53_254, 16_539)
    with pytest.raises(ValueError, match="no validation part"):
        load_dataset("diginetica_srgnn", validation=True)
    with pytest.raises(KeyError, match="known: yoochoose_rsc15_100k"):
        load_dataset("movielens")


def test_missing_data_dir_names_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="NEXTCLICK_DATA_DIR"):
        load_dataset("yoochoose1_64_srgnn", data_dir=tmp_path)


def test_custom_dataset_reads_own_files():
    spec = custom_dataset(DATA / DIGINETICA_RAW, DATA / DIGINETICA_RAW, **DIGINETICA_KW)
    train, test = load_dataset(spec, data_dir="/nonexistent")  # absolute paths ignore data_dir
    assert train.n_clicks == test.n_clicks == 12_391
