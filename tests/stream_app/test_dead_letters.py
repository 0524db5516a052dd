"""Every kind of malformed click ends in the dead-letter topic, unchanged, with its reason.

Runs a real worker against the embedded broker. No model is loaded: refusals must not wait for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stream_app.dead_letters import HEADER_PREFIX
from stream_app.partitioning import partition_for_key

pytestmark = pytest.mark.broker

MAX_PAYLOAD = 512
PARTITIONS = 2


def click(session_id: str = "s1", **fields: Any) -> bytes:
    return json.dumps(
        {"session_id": session_id, "item_id": "214536502", "timestamp": 1396321357.5} | fields
    ).encode()


# (case name, expected reason, key, value); each sent on the key's own partition.
MALFORMED: list[tuple[str, str, bytes | None, bytes | None]] = [
    ("tombstone", "empty", b"s1", None),
    ("zero bytes", "empty", b"s1", b""),
    ("oversize", "oversize", b"s1", click(pad="x" * MAX_PAYLOAD)),
    ("latin-1", "bad_encoding", b"s1", '{"session_id": "s1", "item_id": "é"}'.encode("latin-1")),
    ("truncated json", "bad_json", b"s1", b'{"session_id": "s1", "item_id": '),
    ("array", "not_object", b"s1", b'[{"session_id": "s1"}]'),
    ("no item", "missing_field", b"s1", b'{"session_id": "s1", "timestamp": 1.0}'),
    ("item as list", "wrong_type", b"s1", click(item_id=[1])),
    ("empty session id", "bad_value", b"", click(session_id="")),
    ("negative time", "bad_timestamp", b"s1", click(timestamp=-1.0)),
    ("NaN time", "bad_timestamp", b"s1", click(timestamp=float("nan"))),
    ("infinite time", "bad_timestamp", b"s1", click(timestamp=float("inf"))),
    ("key is another session", "key_mismatch", b"s2", click()),
]


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Any]) -> Iterator[Any]:
    with start_worker("dlq-worker", max_payload_bytes=MAX_PAYLOAD, partitions=PARTITIONS) as running:
        yield running


def headers_of(record: Any) -> dict[str, str]:
    return {name.removeprefix(HEADER_PREFIX): value.decode() for name, value in record.headers}


def test_each_malformed_click_is_dead_lettered_with_reason_and_source(worker: Any) -> None:
    topic = worker.settings.clicks_topic
    sent = [
        (
            name,
            reason,
            key,
            value,
            worker.produce(topic, [(key, value)], partition_for_key(key or b"", PARTITIONS))[0],
        )
        for name, reason, key, value in MALFORMED
    ]
    dead = worker.consume(worker.settings.dead_letter_topic, len(MALFORMED))
    by_source = {(int(headers_of(r)["partition"]), int(headers_of(r)["offset"])): r for r in dead}
    assert len(by_source) == len(MALFORMED)

    for name, reason, key, value, metadata in sent:
        record = by_source[(metadata.partition, metadata.offset)]
        headers = headers_of(record)
        assert headers["reason"] == reason, name
        assert headers["topic"] == topic and headers["message"], name
        assert (record.key, record.value) == (key, value), name

    reasons = {reason for _, reason, _, _ in MALFORMED}
    worker.wait_until(
        lambda: worker.metric("nextclick_events_consumed_total") >= len(MALFORMED), what="consumed counter"
    )
    for reason in reasons:
        expected = sum(1 for _, r, _, _ in MALFORMED if r == reason)
        assert worker.metric("nextclick_dead_letters_total", reason=reason) == expected, reason


def test_a_click_on_the_wrong_partition_is_dead_lettered(worker: Any) -> None:
    home = partition_for_key(b"s7", PARTITIONS)
    worker.produce(worker.settings.clicks_topic, [(b"s7", click("s7"))], partition=1 - home)
    worker.wait_until(
        lambda: worker.metric("nextclick_dead_letters_total", reason="wrong_partition") == 1,
        what="wrong_partition",
    )


def test_the_worker_keeps_running_and_reports_why_it_is_not_ready(worker: Any) -> None:
    status, body = worker.get("/livez")
    assert status == 200
    status, body = worker.get("/readyz")
    assert status == 503
    assert json.loads(body)["checks"] == {
        "model_loaded": False,
        "partitions_assigned": True,
        "tables_recovered": True,
    }
    assert worker.metric("nextclick_errors_total", stage="model_load") >= 1
    assert worker.process.poll() is None
