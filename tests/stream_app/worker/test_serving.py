"""End to end: real clicks through the broker and a worker serving a real artifact.

Each suggestion must equal the offline model's for its session's whole prefix (zero hidden state,
every earlier click stepped again: `offline_items` in conftest), not only the worker's own
incremental step; malformed clicks in between must not disturb it, and session state must survive
a worker restart (changelog) and be evicted after the TTL.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.embedded_broker import EmbeddedBroker
from stream_app.inference.scoring import Scorer
from stream_app.inference.sessions import SessionState
from stream_app.settings import get_settings

pytestmark = pytest.mark.broker

TEST_CLICKS = get_settings().data_dir / "yoochoose_rsc15_100k" / "yoochoose-clicks-100k_test.txt.gz"


def real_sessions(clicks: int) -> list[tuple[str, str]]:
    """The first `clicks` (session id, item id) rows of the data set's test part, in time order."""
    with gzip.open(TEST_CLICKS, "rt") as lines:
        rows = itertools.islice(csv.DictReader(lines, delimiter="\t"), clicks)
        return [(row["SessionId"], row["ItemId"]) for row in rows]


def click_message(session_id: str, item_id: str) -> tuple[bytes, bytes]:
    value = {"session_id": session_id, "item_id": item_id, "timestamp": time.time()}
    return session_id.encode(), json.dumps(value).encode()


@pytest.fixture(scope="module")
def worker(artifact: Path, start_worker: Callable[..., Any]) -> Iterator[Any]:
    fields = {"serving_artifact_dir": artifact}
    with start_worker("serving-worker", require_model=True, **fields) as running:
        yield running


def test_each_click_gets_the_suggestion_of_its_session_prefix(
    worker: Any, scorer: Scorer, offline_items: Callable[[list[str]], list[str]]
) -> None:
    clicks = real_sessions(60)
    malformed = [(b"bad", b"{oops"), (b"s", b"[]")]
    messages = [click_message(*click) for click in clicks]
    messages[10:10], messages[30:30] = [malformed[0]], [malformed[1]]
    worker.produce(worker.settings.clicks_topic, messages)

    suggestions = worker.consume(worker.settings.recommendations_topic, len(clicks))
    assert len(suggestions) == len(clicks)
    history: dict[str, list[str]] = defaultdict(list)
    by_session = defaultdict(list)
    for record in suggestions:
        suggestion = json.loads(record.value)
        assert record.key == suggestion["session_id"].encode()
        by_session[suggestion["session_id"]].append(suggestion)
    for session_id, item_id in clicks:
        history[session_id].append(item_id)
        suggestion = by_session[session_id].pop(0)
        assert suggestion["click"]["item_id"] == item_id
        assert suggestion["items"] == offline_items(history[session_id]), (
            session_id,
            history[session_id],
        )
        assert suggestion["model"] == "gru4rec" and suggestion["artifact_version"] == scorer.version
        assert suggestion["produced_at"] >= suggestion["click"]["timestamp"]
    assert {json.loads(record.value)["source"] for record in suggestions} == {"model", "popularity"}

    assert worker.metric("nextclick_suggestions_published_total") == len(clicks)
    assert worker.metric("nextclick_dead_letters_total", reason="bad_json") == 1
    assert worker.metric("nextclick_dead_letters_total", reason="not_object") == 1
    assert worker.metric("nextclick_events_consumed_total") == len(messages)
    assert worker.metric("nextclick_end_to_end_latency_seconds_count") == len(clicks)
    assert worker.metric("nextclick_batch_size_sum") == len(messages)
    assert 1 <= worker.metric("nextclick_inference_latency_seconds_count") <= len(messages)
    assert worker.metric("nextclick_model_info", artifact_version=scorer.version, name="gru4rec") == 1


def test_the_worker_is_ready_once_the_model_is_loaded(worker: Any) -> None:
    status, body = worker.get("/readyz")
    assert status == 200 and json.loads(body)["ready"] is True


@pytest.mark.parametrize("table_store", ["memory://", "rocksdb://"])
def test_session_state_survives_a_worker_restart(
    table_store: str,
    broker: EmbeddedBroker,
    artifact: Path,
    scorer: Scorer,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    tmp_path: Path,
    offline_items: Callable[[list[str]], list[str]],
) -> None:
    session_id = "restart-1"
    items = scorer.item_ids[10:13]
    if table_store == "rocksdb://":
        pytest.importorskip("rocksdict")
    fields = worker_fields(
        broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact, table_store=table_store
    )
    with launch_worker(fields, tmp_path / "first.log", require_model=True) as first:
        first.produce(first.settings.clicks_topic, [click_message(session_id, item) for item in items[:2]])
        assert len(first.consume(first.settings.recommendations_topic, 2)) == 2
    with launch_worker(fields, tmp_path / "second.log", require_model=True) as second:
        second.produce(second.settings.clicks_topic, [click_message(session_id, items[2])])
        records = second.consume(second.settings.recommendations_topic, 3)
    last = json.loads(records[-1].value)
    assert last["click"]["item_id"] == items[2]
    assert last["items"] == offline_items(items)


def test_a_state_keeps_the_offsets_of_only_the_clicks_kafka_may_deliver_again(worker: Any, scorer: Scorer) -> None:
    """A click below its partition's committed offset never comes again, so its offset leaves the state: a
    long session's record carries one offset, not one per kept click."""
    session, items = "kept-offsets", scorer.item_ids[:3]
    clicked = []
    for item in items:
        [sent] = worker.produce(worker.settings.clicks_topic, [click_message(session, item)])
        clicked.append(sent.offset)
        worker.wait_until(
            lambda sent=sent: worker.committed(worker.settings.app_id, sent.topic, sent.partition) > sent.offset,
            what=f"the commit of offset {sent.offset}",
        )
    changelog = f"{worker.settings.app_id}-sessions-changelog"
    records = [r for r in worker.consume(changelog, 10_000, timeout=3.0) if r.key == session.encode()]
    states = [SessionState.loads(r.value) for r in records]
    assert [state.items for state in states] == [items[:1], items[:2], items]
    assert [state.offsets for state in states] == [[offset] for offset in clicked]


def test_idle_sessions_are_evicted_by_the_timer(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    tmp_path: Path,
    scorer: Scorer,
) -> None:
    fields = worker_fields(
        broker.bootstrap_servers,
        tmp_path,
        serving_artifact_dir=artifact,
        session_ttl=1.0,
        eviction_interval=0.3,
    )
    with launch_worker(fields, tmp_path / "worker.log", require_model=True) as worker:
        worker.produce(worker.settings.clicks_topic, [click_message("idle-1", scorer.item_ids[0])])
        assert len(worker.consume(worker.settings.recommendations_topic, 1)) == 1
        changelog = f"{worker.settings.app_id}-sessions-changelog"
        records = worker.consume(changelog, 2)
        assert [(r.key, r.value is None) for r in records] == [(b"idle-1", False), (b"idle-1", True)]
        worker.wait_until(lambda: worker.metric("nextclick_active_sessions") == 0, what="active sessions 0")


def test_a_click_time_no_clock_could_give_is_answered_but_not_observed_as_latency(worker: Any) -> None:
    """Timestamps of 0 or 1e308 are valid JSON Schema; as latencies they would be 10^9 s and fire alerts."""
    observed = worker.metric("nextclick_end_to_end_latency_seconds_count")
    own = worker.metric("nextclick_processing_latency_seconds_count")
    published = worker.metric("nextclick_suggestions_published_total")
    stamps = {"t-epoch": 0, "t-far": 1e308}
    worker.produce(
        worker.settings.clicks_topic,
        [(s.encode(), json.dumps({"session_id": s, "item_id": "1", "timestamp": t}).encode())
         for s, t in stamps.items()],
    )
    worker.wait_until(lambda: worker.metric("nextclick_suggestions_published_total") == published + 2, what="answers")
    assert worker.metric("nextclick_latency_unobserved_total") == 2
    assert worker.metric("nextclick_end_to_end_latency_seconds_count") == observed
    assert worker.metric("nextclick_processing_latency_seconds_count") == own + 2
