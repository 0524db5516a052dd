"""The `vsknn` pipeline on the real broker, under the catalogue's rules: two workers, each serving one partition, find
neighbours among the sessions of the other's partition (each reads the whole clicks topic), an item no artifact knows
is suggested while the catalogue shows it (a record reaches both workers), and a restarted worker rebuilds its index
and its item table from the topics before it serves. With `artifact`, a worker serves the blend its artifact
records, suggesting an item no artifact knows and answering a click on one."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.artifact_versions import edit_manifest, renamed
from devtools.catalogue_flips import catalogue_record
from devtools.embedded_broker import EmbeddedBroker, free_port
from stream_app.inference.artifact_format import ITEM_IDS
from stream_app.inference.partitioning import partition_for_key
from stream_app.inference.served_pipeline import ServingPipeline
from stream_app.inference.session_knn import VSKNNParams

pytestmark = pytest.mark.broker

PARTITIONS = 2


def session_on(partition: int, prefix: str) -> str:
    return next(f"{prefix}-{n}" for n in range(1000) if partition_for_key(f"{prefix}-{n}".encode(), PARTITIONS)
                == partition)


def click(session: str, item: str) -> tuple[bytes, bytes]:
    return session.encode(), json.dumps({"session_id": session, "item_id": item, "timestamp": 1.0e9}).encode()


def answer(worker: Any, topic: str, session: str, count: int) -> dict[str, Any]:
    """The suggestion for `session`, among the first `count` records of the recommendations topic."""
    return next(json.loads(r.value) for r in worker.consume(topic, count) if r.key == session.encode())


def test_two_workers_share_neighbours_across_partitions_and_a_restart_rebuilds_the_index_and_the_catalogue(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    fields = worker_fields(broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact, partitions=PARTITIONS,
                           serving_model="vsknn", catalogue_rules=True)

    def launch(name: str) -> contextlib.AbstractContextManager[Any]:
        own = fields | {"web_port": free_port(), "table_dir": tmp_path / name / "tables"}
        return launch_worker(own, tmp_path / f"{name}.log", require_model=True)

    earlier, later, after_restart = session_on(0, "earlier"), session_on(1, "later"), session_on(1, "restarted")
    once_available = session_on(0, "available")
    recommendations, catalogue = fields["recommendations_topic"], fields["catalogue_topic"]
    known = json.loads((artifact / ITEM_IDS).read_text())[5]
    launched = ["launch-1", "launch-2"]  # items no artifact knows
    with launch("first") as first:
        with launch("second") as second:
            for worker in (first, second):
                worker.wait_until(lambda w=worker: w.readiness()["ready"], timeout=60, what="readiness")
            first.produce(fields["clicks_topic"], [click(earlier, item) for item in [known, *launched]])
            answered = first.consume(fields["recommendations_topic"], 3)
            assert len(answered) == 3
            for worker in (first, second):  # both have indexed the session, whichever partition they serve
                worker.wait_until(lambda w=worker: w.metric("nextclick_knn_sessions") >= 1, what="indexed session")
            first.produce(catalogue, [(launched[0].encode(), catalogue_record(False))])  # not on sale yet
            for worker in (first, second):
                worker.wait_until(lambda w=worker: w.metric("nextclick_catalogue_items") == 1, what="the record")
            first.produce(fields["clicks_topic"], [click(later, known)])
            suggestion = answer(first, recommendations, later, 4)
            assert suggestion["items"][0] == launched[1] and launched[0] not in suggestion["items"], suggestion
            served = [worker.metric("nextclick_suggestions_published_total") for worker in (first, second)]
            assert served.count(0.0) == 0, served  # one worker answered `earlier`, the other `later`
    with launch("restarted") as restarted:  # alone: it serves both partitions from the index it rebuilt
        restarted.wait_until(lambda: restarted.readiness()["checks"]["knn_index_loaded"], what="index loaded")
        assert restarted.metric("nextclick_knn_sessions") >= 2
        restarted.produce(fields["clicks_topic"], [click(after_restart, known)])
        suggestion = answer(restarted, recommendations, after_restart, 5)  # the record read before serving
        assert suggestion["items"][0] == launched[1] and launched[0] not in suggestion["items"], suggestion
        restarted.produce(catalogue, [(launched[0].encode(), catalogue_record(True))])  # on sale
        restarted.wait_until(lambda: restarted.metric("nextclick_catalogue_propagation_seconds_count") == 1,
                             what="the record applied")
        restarted.produce(fields["clicks_topic"], [click(once_available, known)])
        suggestion = answer(restarted, recommendations, once_available, 6)
        assert set(suggestion["items"][:2]) == set(launched), suggestion


def test_a_worker_with_serving_model_artifact_serves_the_blend_its_artifact_records(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    blend = renamed(artifact, tmp_path / "blend", "blend-version")
    edit_manifest(blend, serving_pipeline=ServingPipeline("blend", "gru4rec", 0.3, VSKNNParams()).to_dict())
    fields = worker_fields(broker.bootstrap_servers, tmp_path, serving_artifact_dir=blend, partitions=PARTITIONS,
                           serving_model="artifact", catalogue_rules=False)
    known = json.loads((artifact / ITEM_IDS).read_text())[5]
    with launch_worker(fields, tmp_path / "worker.log", require_model=True) as worker:
        worker.wait_until(lambda: worker.readiness()["ready"], timeout=60, what="readiness")
        worker.produce(fields["clicks_topic"], [click("earlier", item) for item in (known, "launch-1")])
        assert len(worker.consume(fields["recommendations_topic"], 2)) == 2
        worker.produce(fields["clicks_topic"], [click("later", known), click("newcomer", "launch-1")])
        answered = {r.key: json.loads(r.value) for r in worker.consume(fields["recommendations_topic"], 4)}
    later, newcomer = answered[b"later"], answered[b"newcomer"]
    assert later["model"] == "blend" and later["artifact_version"] == "blend-version"
    assert "launch-1" in later["items"][:2], later  # an item no artifact knows, through its kNN score
    assert newcomer["source"] == "model" and newcomer["items"][0] == known, newcomer  # a click the model cannot score
