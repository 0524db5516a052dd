"""The quality gate on real artifacts and real held-out sessions, and publishing through it (promotions,
rollbacks and canaries from the command line)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.artifact_versions import edit_manifest, renamed, shuffled_vocabulary
from devtools.embedded_broker import EmbeddedBroker
from stream_app import artifacts
from stream_app.inference.scoring import Scorer
from stream_app.inference.served_pipeline import ServingPipeline, served_scorer
from stream_app.inference.served_quality import served_top_k_metrics
from stream_app.inference.session_knn import VSKNNParams
from stream_app.release.gate import quality_gate
from stream_app.release.publish import Published, gate_and_push
from stream_app.release.store import ArtifactStore
from stream_app.settings import Settings, get_settings
from training.data.datasets import load_dataset

TEST_SESSIONS = 100  # the tiny artifact's own test sessions (conftest.TINY_TRAINING)


@pytest.fixture(scope="module")
def held_out() -> list[list[str]]:
    """The first real test-day sessions, item ids as logged (items the model never saw included)."""
    _, test = load_dataset("yoochoose_rsc15_100k")
    return test.head_sessions(TEST_SESSIONS).sessions_as_ids()


def test_served_figures_equal_the_offline_protocol_where_the_two_coincide(
    artifact: Path, scorer: Scorer, held_out: list[list[str]]
) -> None:
    """Offline (training.evaluation.evaluate) drops unseen items and excludes nothing; served so, the figures agree."""
    offline = json.loads((artifact / "metrics.json").read_text())["results"]["gru4rec"]
    known = [[item for item in session if scorer.index_of(item) is not None] for session in held_out]
    served = served_top_k_metrics(scorer, known, Settings(exclude_seen=False))
    assert served.predictions == offline["n_predictions"]
    assert served.recall == pytest.approx(offline["recall@20"], abs=1e-9)
    assert served.mrr == pytest.approx(offline["mrr@20"], abs=1e-6)


def test_the_gate_refuses_a_worse_model_and_accepts_an_equal_or_a_better_one(
    artifact: Path, scorer: Scorer, held_out: list[list[str]], tmp_path: Path
) -> None:
    settings = Settings(quality_gate_tolerance=0.01)
    same = Scorer(renamed(artifact, tmp_path / "same", "same"))
    worse = Scorer(shuffled_vocabulary(artifact, tmp_path / "worse", "worse"))

    refused = quality_gate(worse, scorer, held_out, settings, source="test day")
    assert not refused.passed and not refused.promote
    assert refused.current.recall - refused.candidate.recall > settings.quality_gate_tolerance  # a real gap
    equal = quality_gate(same, scorer, held_out, settings, source="test day")
    assert (
        equal.passed
        and equal.candidate.recall == equal.current.recall
        and equal.candidate.mrr == equal.current.mrr
    )
    assert quality_gate(scorer, worse, held_out, settings, source="test day").passed
    forced = quality_gate(worse, scorer, held_out, settings, source="test day", force=True)
    assert not forced.passed and forced.forced and forced.promote


@pytest.fixture
def store_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A local store in tmp_path, no announcements; also what `get_settings()` (the CLI) returns."""
    monkeypatch.setenv("NEXTCLICK_ARTIFACT_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("NEXTCLICK_ARTIFACT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NEXTCLICK_MODEL_UPDATES_TOPIC", "")
    monkeypatch.setenv("NEXTCLICK_QUALITY_GATE_TOLERANCE", "0.01")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_publishing_gates_records_and_promotes_only_what_passes(
    artifact: Path,
    held_out: list[list[str]],
    store_settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = ArtifactStore.from_settings(store_settings)

    def push(folder: Path, **options: bool) -> Published:
        return gate_and_push(folder, held_out, store_settings, source="test day", **options)

    first = push(renamed(artifact, tmp_path / "v1", "v1"))
    assert first.pointer.version == "v1" and first.decision.passed and first.decision.current is None

    worse = push(shuffled_vocabulary(artifact, tmp_path / "v2", "v2"))
    assert worse.pointer is None and store.current().version == "v1" and store.versions() == ["v1", "v2"]
    gate = store.manifest("v2")["quality_gate"]  # the stored version carries the decision and both figures
    assert gate["passed"] is False and gate["forced"] is False
    assert gate["candidate"]["version"] == "v2" and gate["current"]["version"] == "v1"
    assert gate["candidate"]["recall@20"] < gate["current"]["recall@20"] - 0.01
    assert gate["held_out"] == {
        "source": "test day",
        "sessions": TEST_SESSIONS,
        "predictions": gate["candidate"]["predictions"],
    }

    with caplog.at_level(logging.WARNING):
        forced = push(shuffled_vocabulary(artifact, tmp_path / "v3", "v3", seed=1), force=True)
    assert forced.pointer.version == "v3" and store.manifest("v3")["quality_gate"]["forced"] is True
    assert "overridden" in caplog.text

    assert artifacts.main(["promote", "v2"]) == 2  # refused at push time: needs --force
    assert "--force" in capsys.readouterr().err
    assert artifacts.main(["promote", "v2", "--force"]) == 0 and store.current().version == "v2"
    assert artifacts.main(["rollback"]) == 0 and store.current().version == "v3"
    assert artifacts.main(["rollback", "--to", "v1"]) == 0 and store.current().version == "v1"
    capsys.readouterr()
    assert artifacts.main(["list"]) == 0
    listed = capsys.readouterr().out.splitlines()[1:]  # after the store line, newest first
    assert [(line[0], line[2:].split()[0]) for line in listed] == [(" ", "v3"), (" ", "v2"), ("*", "v1")]
    assert [
        "gate: refused, forced" in listed[0],
        "gate: refused (" in listed[1],
        "gate: passed" in listed[2],
    ] == [True, True, True]


def test_a_canary_from_the_command_line_is_checked_like_a_promotion_and_listed(
    artifact: Path,
    held_out: list[list[str]],
    store_settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = ArtifactStore.from_settings(store_settings)
    for folder in (renamed(artifact, tmp_path / "v1", "v1"), shuffled_vocabulary(artifact, tmp_path / "v2", "v2")):
        gate_and_push(folder, held_out, store_settings, source="test day")
    assert store.current().version == "v1" and not store.manifest("v2")["quality_gate"]["passed"]
    capsys.readouterr()

    assert artifacts.main(["canary", "v2", "--share", "0.1"]) == 2  # refused at push time: needs --force
    assert "--force" in capsys.readouterr().err and store.canary() is None
    assert artifacts.main(["canary", "v1", "--share", "0.1"]) == 2
    assert "current version" in capsys.readouterr().err
    assert artifacts.main(["canary", "v2", "--share", "1.5", "--force"]) == 2
    for usage in (["canary", "v2"], ["canary", "stop", "--share", "0.1"]):
        with pytest.raises(SystemExit):
            artifacts.main(usage)
    assert artifacts.main(["canary", "v2", "--share", "0.1", "--force"]) == 0
    assert store.canary().version == "v2" and store.canary().share == 0.1
    capsys.readouterr()

    assert artifacts.main(["list"]) == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert [(line[0], line[2:].split()[0]) for line in listed] == [("~", "v2"), ("*", "v1")]
    assert listed[0].endswith("canary: share 0.1") and "canary" not in listed[1]
    assert artifacts.main(["show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["manifest"]["version"] == "v1"
    assert shown["canary"] == {"version": "v2", "share": 0.1, "updated_at": store.canary().updated_at}
    assert artifacts.main(["show", "v2"]) == 0 and "canary" not in json.loads(capsys.readouterr().out)

    assert artifacts.main(["canary", "stop"]) == 0 and store.canary() is None
    assert capsys.readouterr().out == "canary v2 stopped\n"
    assert artifacts.main(["canary", "stop"]) == 0
    assert capsys.readouterr().out == "no canary was running\n"
    assert artifacts.main(["show"]) == 0 and json.loads(capsys.readouterr().out)["canary"] is None

    assert artifacts.main(["canary", "v2", "--share", "0.2", "--force"]) == 0
    assert artifacts.main(["promote", "v2", "--force"]) == 0 and store.canary() is None
    assert capsys.readouterr().out.splitlines()[-1] == "canary v2 ended: it is current now"


def test_with_serving_model_artifact_the_gate_judges_each_versions_recorded_pipeline(
    artifact: Path,
    held_out: list[list[str]],
    store_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """v1 records no pipeline (GRU4Rec serves), v2 the blend: each is judged by what a worker would serve."""
    monkeypatch.setenv("NEXTCLICK_SERVING_MODEL", "artifact")
    monkeypatch.setenv("NEXTCLICK_CATALOGUE_RULES", "false")
    get_settings.cache_clear()
    settings = get_settings()
    first = gate_and_push(renamed(artifact, tmp_path / "v1", "v1"), held_out, settings, source="test day")
    blend = renamed(artifact, tmp_path / "v2", "v2")
    edit_manifest(blend, serving_pipeline=ServingPipeline("blend", "gru4rec", 0.5, VSKNNParams()).to_dict())
    expected = served_top_k_metrics(served_scorer(blend, settings), held_out, settings)
    second = gate_and_push(blend, held_out, settings, source="test day")
    assert second.decision.candidate == expected  # the blend, over an index the replay fills
    assert (second.decision.current.recall, second.decision.current.mrr) == (first.decision.candidate.recall,
                                                                             first.decision.candidate.mrr)
    assert (expected.recall, expected.mrr) != (first.decision.candidate.recall, first.decision.candidate.mrr)


@pytest.mark.broker
def test_canary_starts_and_stops_are_announced_on_the_model_updates_topic(
    artifact: Path,
    broker: EmbeddedBroker,
    kafka_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    updates = f"model-updates-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("NEXTCLICK_ARTIFACT_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("NEXTCLICK_ARTIFACT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NEXTCLICK_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("NEXTCLICK_MODEL_UPDATES_TOPIC", updates)
    get_settings.cache_clear()
    settings = get_settings()
    store = ArtifactStore.from_settings(settings)
    for version in ("v1", "v2"):
        store.push(renamed(artifact, tmp_path / version, version))
    store.promote("v1")
    try:
        assert artifacts.main(["canary", "v2", "--share", "0.25"]) == 0
        started = store.canary()
        assert artifacts.main(["canary", "stop"]) == 0
    finally:
        get_settings.cache_clear()
    messages = [json.loads(record.value) for record in kafka_client(settings).consume(updates, 2)]
    assert messages == [
        {"version": "v2", "action": action, "share": 0.25, "store": store.location, "updated_at": started.updated_at}
        for action in ("canary", "canary-stop")
    ]


def test_damaged_versions_are_skipped_refused_in_one_line_and_do_not_stop_publishing(
    artifact: Path,
    held_out: list[list[str]],
    store_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unreadable manifest (v2), a truncated ONNX graph (v3), a wrong item count (v4), as an operator meets them."""
    store = ArtifactStore.from_settings(store_settings)
    gate_and_push(renamed(artifact, tmp_path / "v1", "v1"), held_out, store_settings, source="test day")
    for version in ("v2", "v3", "v4"):
        store.push(renamed(artifact, tmp_path / version, version))
    stored = Path(store.location) / "versions"
    (stored / "v2" / "manifest.json").write_text('{"version": ')
    graph = stored / "v3" / "gru4rec.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    edit_manifest(stored / "v4", models={"gru4rec": store.manifest("v4")["models"]["gru4rec"] | {"n_items": 7}})
    capsys.readouterr()

    with caplog.at_level(logging.WARNING):
        assert artifacts.main(["list"]) == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert [line[2:].split()[0] for line in listed] == ["v4", "v3", "v1"]  # newest first, v2 left out
    [warning] = caplog.messages
    assert "1 unreadable version(s)" in warning and "v2 (manifest.json: Expecting value" in warning

    def refused(argv: list[str], why: str) -> None:
        try:
            status = artifacts.main(argv)
        except SystemExit as usage:  # argparse's refusals exit from within
            status = usage.code
        assert status == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and why in err, (argv, err)

    refused(["promote", "v2"], "'v2' in the store")
    refused(["promote", "v2"], "is unreadable: manifest.json: Expecting value")
    refused(["canary", "v2", "--share", "0.1"], "is unreadable")
    refused(["show", "v2"], "is unreadable")
    refused(["promote", "v3"], "version v3 is damaged: ")
    refused(["promote", "v3"], "gru4rec.onnx does not match its sha256")
    refused(["canary", "v3", "--share", "0.1"], "does not match its sha256")
    refused(["promote", "v4"], "the models say {'gru4rec': 7}")
    refused(["promote", "v9"], "no version 'v9'")
    refused(["canary", "v1", "--share", "nan"], "strictly between 0 and 1")
    refused(["canary", "v4", "--share", "x"], "invalid float value: 'x'")
    refused(["canary", "v4"], "canary VERSION needs --share")
    refused(["rollback"], "nothing to roll back to")
    assert store.current().version == "v1" and store.canary() is None

    monkeypatch.setenv("NEXTCLICK_ARTIFACT_KEEP_VERSIONS", "2")
    get_settings.cache_clear()
    published = gate_and_push(renamed(artifact, tmp_path / "v5", "v5"), held_out, get_settings(), source="test day")
    assert published.pointer.version == "v5"  # then pruned: v3 goes (v4, v5 newest, v1 the rollback target), v2 stays
    assert store.versions() == ["v1", "v4", "v5"] and (stored / "v2").is_dir()
    damaged = stored / "v1" / "popularity.npy"
    damaged.write_bytes(b"")
    refused(["rollback"], "version v1 is damaged: ")
    assert store.current().version == "v5"

    for name, value, why in [("NEXTCLICK_ARTIFACT_DIR", str(tmp_path / "nowhere"), "no artifact store at"),
                             ("NEXTCLICK_ARTIFACT_KEEP_VERSIONS", "one", "invalid settings: artifact_keep_versions")]:
        monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        refused(["list"], why)
