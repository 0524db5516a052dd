"""/readyz follows the broker: a frozen broker makes the worker not ready within NEXTCLICK_BROKER_READY_GRACE (and
ready again on its own once it answers), a memory broker that restarted empty makes it not ready with "topics
missing" and stops its serving; /livez answers 200 throughout. Each test runs its own embedded broker. The topics
checked include the catalogue topic, with the partitions it had when the worker started reading it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from devtools.embedded_broker import EmbeddedBroker
from stream_app.settings import Settings
from stream_app.worker.broker_watch import BrokerWatch, worker_topics
from stream_app.worker.metrics import WorkerMetrics

GRACE = 3.0
FAST_CHECKS = {"broker_ready_grace": GRACE, "broker_check_interval": 0.5}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(log_file=tmp_path / "broker.log").start()
    try:
        yield broker
    finally:
        if broker.pid is not None:
            os.kill(broker.pid, signal.SIGCONT)  # a frozen broker would not stop on SIGTERM
        broker.stop()


def readyz(worker: Any) -> tuple[int, dict[str, Any]]:
    status, body = worker.get("/readyz")
    return status, json.loads(body)


def click_message(session_id: str, item_id: str) -> tuple[bytes, bytes]:
    value = {"session_id": session_id, "item_id": item_id, "timestamp": time.time()}
    return session_id.encode(), json.dumps(value).encode()


@pytest.mark.broker
def test_a_frozen_broker_makes_the_worker_not_ready_within_the_grace_and_ready_again_after(
    artifact: Path, own_broker: EmbeddedBroker, tmp_path: Path, launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
) -> None:
    fields = worker_fields(own_broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact, **FAST_CHECKS)
    with launch_worker(fields, tmp_path / "worker.log", require_model=True) as worker:
        worker.wait_until(lambda: worker.get("/readyz")[0] == 200, what="readiness")
        assert worker.metric("nextclick_broker_faults_total", fault="unreachable") == 0

        os.kill(own_broker.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        worker.wait_until(lambda: worker.get("/readyz")[0] == 503, timeout=GRACE + 3, what="not ready")
        assert time.monotonic() - frozen >= GRACE - 0.5  # not before the grace
        status, body = readyz(worker)
        assert body["checks"]["broker_reachable"] is False
        assert "no metadata answer from the broker" in body["reasons"]["broker_reachable"]
        assert worker.get("/livez")[0] == 200
        worker.wait_until(lambda: worker.metric("nextclick_broker_faults_total", fault="unreachable") == 1,
                          what="the fault counted")

        os.kill(own_broker.pid, signal.SIGCONT)
        worker.wait_until(lambda: worker.get("/readyz")[0] == 200, timeout=20, what="ready again")
        assert worker.get("/livez")[0] == 200
    log = worker.log.read_text(errors="replace")
    assert log.count("the broker has not answered a metadata request") == 1, log[-3000:]


@pytest.mark.broker
def test_a_memory_broker_restarted_empty_makes_the_worker_not_ready_and_stops_its_serving(
    artifact: Path, own_broker: EmbeddedBroker, tmp_path: Path, launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]], scorer: Any,
) -> None:
    fields = worker_fields(own_broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact, **FAST_CHECKS)
    items = scorer.item_ids[:5]
    restarted_broker = EmbeddedBroker(port=own_broker.port, log_file=tmp_path / "broker-2.log")
    with ExitStack() as stack:
        stack.callback(restarted_broker.stop)  # after the worker's stop
        worker = stack.enter_context(launch_worker(fields, tmp_path / "worker.log", require_model=True))
        clicks_topic = worker.settings.clicks_topic
        worker.produce(clicks_topic, [click_message(f"before-{n}", items[n]) for n in range(4)])
        worker.wait_until(lambda: worker.metric("nextclick_suggestions_published_total") == 4, what="suggestions")
        worker.wait_until(lambda: worker.get("/readyz")[0] == 200, what="readiness")

        os.kill(own_broker.pid, signal.SIGKILL)
        own_broker.stop()
        restarted_broker.start()  # memory storage: no topics at all
        restarted = time.monotonic()
        worker.wait_until(lambda: "topics_present" in readyz(worker)[1].get("reasons", {}), timeout=GRACE + 3,
                          what="not ready with the topics' reason")
        print(f"not ready {time.monotonic() - restarted:.1f} s after the restart")
        status, body = readyz(worker)
        assert status == 503 and body["checks"]["topics_present"] is False
        reason = body["reasons"]["topics_present"]
        assert reason.startswith("topics missing") and worker.settings.recommendations_topic in reason, reason
        assert worker.get("/livez")[0] == 200
        assert worker.metric("nextclick_broker_faults_total", fault="topics_missing") == 1

        # clicks sent now (the broker creates the clicks topic) are not answered into topics that do not exist
        worker.produce(clicks_topic, [click_message(f"after-{n}", items[n]) for n in range(4)])
        time.sleep(3)
        assert worker.metric("nextclick_suggestions_published_total") == 4
        assert readyz(worker)[0] == 503
        # a SIGTERM would wait for the held batch (acking it unserved would lose its clicks): restart by SIGKILL
        worker.process.kill()
        worker.process.wait(timeout=10)
    log = worker.log.read_text(errors="replace")
    assert log.count("the broker lost topics this worker needs") == 1, log[-3000:]


def test_the_watch_turns_unreachable_after_the_grace_and_counts_each_outage_once() -> None:
    now = [100.0]
    metrics = WorkerMetrics()
    watch = BrokerWatch(metrics, grace=10.0, clock=lambda: now[0])
    now[0] += 9.0
    watch.no_answer()
    assert watch.reachable() and watch.reasons() == {}
    for _ in range(3):
        now[0] += 1.5
        watch.no_answer()
    assert not watch.reachable()
    assert watch.reasons()["broker_reachable"] == "no metadata answer from the broker for 13.5 s (grace 10 s)"
    assert metrics.registry.get_sample_value("nextclick_broker_faults_total", {"fault": "unreachable"}) == 1
    watch.answered()
    assert watch.reachable() and watch.reasons() == {}


def test_missing_topics_count_once_two_answers_in_a_row_report_them() -> None:
    metrics = WorkerMetrics()
    watch = BrokerWatch(metrics, grace=10.0)
    watch.topics_found(["t-recommendations does not exist"])  # one answer may miss a topic being created
    watch.topics_found([])
    watch.topics_found(["t-recommendations does not exist"])
    assert watch.topics_present() and watch.topics_ok.is_set()
    watch.topics_found(["t-recommendations does not exist"])
    assert not watch.topics_present() and not watch.topics_ok.is_set()
    assert watch.reasons() == {"topics_present": "topics missing: t-recommendations does not exist"}
    watch.topics_found(["t-recommendations does not exist"])
    assert metrics.registry.get_sample_value("nextclick_broker_faults_total", {"fault": "topics_missing"}) == 1
    watch.topics_found([])
    assert watch.topics_present() and watch.topics_ok.is_set()


def test_the_catalogue_topic_is_checked_with_the_partitions_it_had_once_the_worker_reads_it() -> None:
    settings = Settings(partitions=4)
    changelog = "app-sessions-changelog"
    plain = worker_topics(settings, changelog, catalogue_partitions=None)
    assert plain == dict.fromkeys(
        (settings.clicks_topic, settings.recommendations_topic, settings.dead_letter_topic, changelog), 4)
    ruled = worker_topics(settings, changelog, catalogue_partitions=1)
    assert ruled == plain | {settings.catalogue_topic: 1}

    class Cluster:  # what the broker's metadata answer says: the catalogue topic re-created with 3 partitions
        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(3 if topic == settings.catalogue_topic else 4))

    class Client:
        async def fetch_all_metadata(self) -> Cluster:
            return Cluster()

    watch = BrokerWatch(WorkerMetrics(), grace=10.0)
    for _ in range(2):  # a problem counts once two answers in a row report it
        asyncio.run(watch.check(Client(), ruled, timeout=1.0))
    assert watch.reasons() == {"topics_present": f"topics missing: {settings.catalogue_topic} has 3 partitions, "
                                                 "expected 1"}
