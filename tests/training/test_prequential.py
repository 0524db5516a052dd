"""The prequential replay (`python -m training.prequential`) on a small real slice of YOOCHOOSE: with the updates
turned off it gives the frozen version's served figures on the same clicks, the incremental updates know the
stream's new items, the live kNN policies serve in stream order from an index that learns each click once served,
and bad data ends it with one line and exit status 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stream_app.inference.live_knn import LiveNeighbours
from stream_app.inference.scoring import Scorer
from stream_app.inference.served_baseline import ItemVocabulary, ServedBaseline
from stream_app.inference.served_quality import served_top_k_metrics
from stream_app.inference.session_knn import VSKNNParams
from stream_app.inference.sessions import SessionRecommender
from stream_app.settings import get_settings
from training import prequential, prequential_merge
from training.data.click_log import ClickLog
from training.data.datasets import dataset_files

pytestmark = pytest.mark.training

SESSIONS, SLICE_CLICKS = 1200, 800  # 600 sessions train the first version, 2,325 clicks stream in 3 slices
# conftest.TINY_TRAINING's model: trains in a second on two busy cores
TINY_MODEL = ["--models", "gru4rec", "--epochs", "1", "--gru4rec-layers", "32", "--gru4rec-batch-size", "64",
              "--gru4rec-n-sample", "256", "--threads", "1"]


def replay(out: Path, *flags: str) -> dict:
    return prequential.main(["--dataset", "yoochoose_rsc15_100k", "--max-sessions", str(SESSIONS), "--slice-clicks",
                             str(SLICE_CLICKS), "--no-progress", "--out", str(out), *TINY_MODEL, *flags])


def stream_sessions() -> list[list[str]]:
    files = dataset_files("yoochoose_rsc15_100k")
    log = prequential.joined(files.read_train(), files.read_test()).head_sessions(SESSIONS)
    return prequential.initial_and_stream(log, 0.5)[1].sessions_as_ids()


def test_with_the_updates_turned_off_it_gives_the_frozen_versions_served_figures(tmp_path: Path) -> None:
    result = replay(tmp_path, "--policies", "frozen", "incremental", "--incremental-every", "0")
    sessions = stream_sessions()
    assert sum(entry["sessions"] for entry in result["slices"]) > len(sessions)  # sessions cross slice boundaries
    served = served_top_k_metrics(Scorer(tmp_path / "initial"), sessions, get_settings(), exclude_seen=False)
    assert served.predictions == sum(len(session) - 1 for session in sessions)
    for name in ("frozen", "incremental"):
        policy = result["policies"][name]
        assert policy["overall"] == {
            "hit_rate@20": served.recall, "mrr@20": served.mrr, "predictions": served.predictions,
            "clicks": sum(map(len, sessions)), "unknown_clicks": policy["overall"]["unknown_clicks"],
            "unknown_share": policy["overall"]["unknown_share"],
        }
        assert sum(entry["predictions"] for entry in policy["slices"]) == served.predictions
        assert policy["training"]["versions"] == 0
    slices = {name: [{k: v for k, v in entry.items() if "seconds" not in k} for entry in policy["slices"]]
              for name, policy in result["policies"].items()}
    assert slices["incremental"] == slices["frozen"]


def test_incremental_updates_know_the_new_items_the_frozen_version_does_not(tmp_path: Path) -> None:
    result = replay(tmp_path, "--retrain-every", "2")
    assert result["stream"]["new_items"] > 0
    policies = result["policies"]
    frozen, incremental = policies["frozen"], policies["incremental"]
    assert incremental["overall"]["unknown_share"] < frozen["overall"]["unknown_share"]
    assert frozen["new_items"]["suggested"] == 0  # it cannot name what it never saw
    assert incremental["new_items"]["suggested"] > 0
    assert incremental["new_items"]["stream_clicks_until_suggested"]["median"] > 0
    assert incremental["training"]["versions"] == 2 and incremental["training"]["cpu_seconds"] > 0
    assert policies["retrain"]["training"]["versions"] == 1  # after slice 1 of 0..2; none after the last
    assert {p["overall"]["predictions"] for p in policies.values()} == {frozen["overall"]["predictions"]}
    assert all(0 < p["overall"]["hit_rate@20"] < 1 for p in policies.values())
    assert policies["vsknn"]["overall"]["hit_rate@20"] > policies["popularity"]["overall"]["hit_rate@20"]
    live, blend = policies["live-vsknn"], policies["blend"]
    # the live index knows every item clicked before the batch: at most the clicks the last update had not seen
    assert live["overall"]["unknown_share"] <= incremental["overall"]["unknown_share"]
    assert live["new_items"]["suggested"] > 0 and live["training"]["versions"] == 0
    assert blend["serving"]["artifact_versions_of"] == "incremental" and blend["training"]["versions"] == 2
    assert [entry["version"] for entry in blend["slices"]] == ["initial", "incremental@0", "incremental@1"]
    assert json.loads((tmp_path / prequential.RESULT).read_text()) == json.loads(json.dumps(result))
    assert (tmp_path / prequential.PLOT).stat().st_size > 0
    assert not (tmp_path / "versions" / "incremental" / "after-slice-0").exists()  # superseded: removed


def test_the_two_stage_pipeline_replays_with_dien_fine_tuned(tmp_path: Path) -> None:
    result = replay(tmp_path, "--models", "gru4rec", "dien", "--pipeline", "gru4rec+dien", "--policies", "frozen",
                    "incremental", "--update-dien", "fine-tune", "--dien-holdout-fraction", "0", "--dien-mlp", "16",
                    "--dien-n-candidates", "30")
    frozen, incremental = result["policies"]["frozen"], result["policies"]["incremental"]
    assert incremental["training"]["versions"] == 2
    assert incremental["overall"]["predictions"] == frozen["overall"]["predictions"] > 0
    assert incremental["overall"]["unknown_share"] < frozen["overall"]["unknown_share"]
    assert result["flags"]["prequential"]["update_dien"] == "fine-tune"


def test_slices_per_day_follow_the_logged_times() -> None:
    files = dataset_files("yoochoose_rsc15_100k")
    log = prequential.joined(files.read_train(), files.read_test())
    assert np.all(np.diff(log.times[log.session_offsets()[:-1]]) >= 0)  # sessions in the order of their first click
    stream = prequential.Stream.of(prequential.initial_and_stream(log, 0.5)[1], None)
    times = stream.log.times[stream.order]
    assert np.all(np.diff(times) >= 0)
    days = [np.floor(times[start:end] / prequential.DAY) for start, end in zip(stream.bounds[:-1], stream.bounds[1:])]
    assert all(len(set(day)) == 1 for day in days[:-1]) and len({day[0] for day in days}) == stream.n_slices
    # the test file ends 50 minutes (9 clicks) into 2014-04-08: they join the day before
    assert set(days[-1]) == {days[-1][0], days[-1][0] + 1} and len(days[-1]) - np.sum(days[-1] == days[-1][0]) == 9
    assert stream.labels == ["2014-04-04", "2014-04-05", "2014-04-06", "2014-04-07"]
    assert stream.bounds[-1] == stream.n_clicks


def test_bad_data_ends_it_with_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("SessionId\tItemId\tTime\n1\t214536502\t1396839069.277\n1\t214536500\tnot a time\n")
    with pytest.raises(SystemExit) as exit:
        prequential.main(["--train", str(bad), "--test", str(bad), "--out", str(tmp_path / "out"), "--no-progress"])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and error.startswith("python -m training.prequential: error: bad.tsv: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", [["--choose-pipeline"], ["--tune", "3"], ["--push"]])
def test_a_retrain_flag_the_replay_does_not_honour_is_refused(tmp_path: Path, flag: list[str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        prequential.main(["--dataset", "yoochoose_rsc15_100k", *flag, "--out", str(tmp_path / "out"), "--no-progress"])
    assert exit.value.code == 2
    assert f"{flag[0]}: training.retrain's, not here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_replays_run_side_by_side_merge_into_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = replay(tmp_path / "a", "--policies", "frozen", "incremental")
    b = replay(tmp_path / "b", "--policies", "vsknn", "frozen")
    assert prequential_merge._served(a["policies"]["frozen"]) == prequential_merge._served(b["policies"]["frozen"])
    merged = prequential_merge.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "merged")])
    assert list(merged["policies"]) == ["frozen", "incremental", "vsknn"]
    assert merged["policies"] == {"frozen": a["policies"]["frozen"], "incremental": a["policies"]["incremental"],
                                  "vsknn": b["policies"]["vsknn"]}
    assert merged["flags"]["prequential"]["policies"] == ["frozen", "incremental", "vsknn"]
    assert (tmp_path / "merged" / prequential.PLOT).stat().st_size > 0
    capsys.readouterr()

    def refused(changed: dict, *expected: str) -> None:
        (tmp_path / "c").mkdir(exist_ok=True)
        (tmp_path / "c" / prequential.RESULT).write_text(json.dumps(changed))
        with pytest.raises(SystemExit) as exit:
            prequential_merge.main([str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "refused")])
        assert exit.value.code == 2
        error = capsys.readouterr().err
        assert len(error.splitlines()) == 1 and all(text in error for text in expected)
        assert not (tmp_path / "refused").exists()

    other_stream = json.loads(json.dumps(b))
    other_stream["flags"]["prequential"]["slice_clicks"] = SLICE_CLICKS // 2
    refused(other_stream, "is not the replay of", "flags")
    other_first_version = json.loads(json.dumps(b))
    other_first_version["policies"]["frozen"]["slices"][0]["hit_rate@20"] += 0.01
    refused(other_first_version, "frozen served other figures", "not the same first version")


def test_a_session_of_the_same_slice_is_a_live_neighbour_at_once() -> None:
    """X clicks a new item; Y, later in the same slice, is suggested it by the live index, never by V-SKNN rebuilt
    at the slice's end."""
    first = log_of({"f1": ["a", "b"], "f2": ["a", "c"], "f3": ["b", "c"]})
    stream = prequential.Stream.of(log_of({"x": ["a", "new"], "y": ["b", "a", "c"]}), slice_clicks=100)
    replay = prequential.Replay(stream, {"new"})
    # Y's first click is served with X's second (both indexed just before, as a worker does); Y's second after
    assert [batch.tolist() for batch in replay.stream_batches(0)] == [[0], [1, 2], [3], [4]]
    neighbours = LiveNeighbours(100, VSKNNParams())
    prequential.index_first_part(neighbours, first)
    others = [f"other{number}" for number in range(30)]  # a catalogue longer than a suggestion
    artifact = ServedBaseline("popularity", "first", ItemVocabulary(["a", "b", "c", *others]),
                              np.array([2.0, 2.0, 2.0, *[1.0] * len(others)]), None, 0, 100)
    live = SessionRecommender(neighbours.scorer(artifact, 50), top_k=20, max_history=50, session_ttl=math.inf,
                              exclude_seen=False)
    table: dict = {}
    served = replay.serve_in_stream_order(0, {"live-vsknn": (live, table)}, neighbours)["live-vsknn"]
    assert served.first_suggested == {"new": 3}  # Y's second click
    assert served.clicks == 5 and served.unknown == 0  # X's click on the new item: known once its batch is indexed
    assert table == {}  # both sessions ended: their states are dropped
    rebuilt = prequential.Rebuilt("vsknn", baseline="vsknn", window=51)
    rebuilt.build(first, "vsknn@initial")
    offline = replay.serve(rebuilt.recommender(get_settings(), exclude_seen=False), replay.spans(0))
    assert offline.first_suggested == {} and len(offline.judgements) == len(served.judgements) == 3


def log_of(sessions: dict[str, list[str]]) -> ClickLog:
    """Sessions in this order, without times (the stream in file order)."""
    ids = [session for session, items in sessions.items() for _ in items]
    items = [item for session_items in sessions.values() for item in session_items]
    return ClickLog(np.array(ids, dtype=object), np.array(items, dtype=object), None, "test")


def test_the_blend_weighted_zero_serves_the_live_vsknn_figures(tmp_path: Path) -> None:
    result = replay(tmp_path, "--policies", "vsknn", "live-vsknn", "blend", "--blend-weight", "0")
    policies = result["policies"]
    assert policies["blend"]["serving"]["artifact_versions_of"] == "frozen"  # no incremental policy in this run
    assert policies["live-vsknn"]["overall"]["predictions"] == policies["vsknn"]["overall"]["predictions"]
    assert prequential_merge._served(policies["blend"]) == prequential_merge._served(policies["live-vsknn"])
    assert policies["live-vsknn"]["overall"] != policies["vsknn"]["overall"]
