"""Every kind of malformed click ends in the dead-letter topic, unchanged, with its reason.

Runs a real worker against the embedded broker. No model is loaded: refusals must not wait for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from stream_app.inference.partitioning import partition_for_key
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.worker.dead_letters import HEADER_PREFIX, KEPT_BYTES

pytestmark = pytest.mark.broker

MAX_PAYLOAD = 8192  # room for an integer of more digits than Python reads
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
    ("integer id of 4,400 digits", "bad_value", b"s1", click(item_id=0).replace(b"0", b"1" + b"0" * 4400, 1)),
    ("integer id of 300 digits", "bad_value", b"s1", click(item_id=10**300)),
    ("lone surrogate in the session id", "bad_value", b"s1", click(session_id="\udc00")),
    ("lone surrogate in the item id", "bad_value", b"s1", click(item_id="a\ud800")),
    ("rules not an object", "bad_value", b"s1", click(rules=["1096"])),
    ("rules with an unknown field", "bad_value", b"s1", click(rules={"category": "1096"})),
    ("an excluded item of the wrong type", "bad_value", b"s1", click(rules={"exclude_items": [None]})),
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


def test_a_message_too_big_for_any_dead_letter_arrives_cut_with_its_size_and_hash(worker: Any) -> None:
    """A 1.2 MB value or key is refused (oversize, key mismatch); sent whole, its dead letter would
    exceed the producer's 1 MB limit and be lost: it arrives as its first 256 KiB."""
    huge_value = click(pad="x" * 1_200_000)
    huge_key = b"k" * 1_200_000
    sent = [
        (b"s1", huge_value, "oversize", "value"),
        (huge_key, click(), "key_mismatch", "key"),
    ]

    async def send_large() -> list[Any]:
        producer = AIOKafkaProducer(max_request_size=4 << 20, **aiokafka_client_kwargs(worker.settings))
        await producer.start()
        try:
            return [
                await producer.send_and_wait(worker.settings.clicks_topic, value, key=key,
                                             partition=partition_for_key(key, PARTITIONS))
                for key, value, _, _ in sent
            ]
        finally:
            await producer.stop()

    metadata = asyncio.run(send_large())
    wanted = {(m.partition, m.offset) for m in metadata}
    found: dict[tuple[int, int], Any] = {}
    deadline = time.monotonic() + 30
    while len(found) < len(wanted) and time.monotonic() < deadline:
        for record in worker.consume(worker.settings.dead_letter_topic, 1000, timeout=3):
            source = (int(headers_of(record)["partition"]), int(headers_of(record)["offset"]))
            if source in wanted:
                found[source] = record
    assert found.keys() == wanted
    for (key, value, reason, cut), m in zip(sent, metadata, strict=True):
        record, headers = found[(m.partition, m.offset)], headers_of(found[(m.partition, m.offset)])
        original = {"key": key, "value": value}[cut]
        assert headers["reason"] == reason
        assert getattr(record, cut) == original[:KEPT_BYTES]
        assert headers[f"{cut}_bytes"] == str(len(original))
        assert headers[f"{cut}_sha256"] == hashlib.sha256(original).hexdigest()


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
        "catalogue_loaded": True,
        "knn_index_loaded": True,
        "partitions_assigned": True,
        "tables_recovered": True,
        "broker_reachable": True,
        "topics_present": True,
    }
    assert "reasons" not in json.loads(body)  # only the broker checks explain themselves
    assert worker.metric("nextclick_errors_total", stage="model_load") >= 1
    assert worker.process.poll() is None
