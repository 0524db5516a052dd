"""Retraining from the clicks topic: real clicks in a real broker become the click logs the files give."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devtools.click_replay import kafka_producer
from devtools.embedded_broker import EmbeddedBroker
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.release.store import ArtifactStore
from stream_app.settings import Settings
from training.data.click_log import ClickLog
from training.data.datasets import load_dataset
from training.data.stream_source import click_log, read_topic, split_holdout

pytestmark = pytest.mark.broker

TRAIN_SESSIONS, TEST_SESSIONS = 2000, 100  # conftest.TINY_TRAINING's slice
PARTITIONS = 3
MALFORMED = [
    (b"s1", b"{oops"),
    (b"other-key", json.dumps({"session_id": "s1", "item_id": "1", "timestamp": 1.0}).encode()),
]


def sessions_of(log: ClickLog) -> dict[str, tuple[list[str], list[float]]]:
    offsets = log.session_offsets()
    return {
        log.session_ids[start]: (list(log.item_ids[start:end]), list(log.times[start:end]))
        for start, end in itertools.pairwise(offsets)
    }


async def fill_topic(settings: Settings, topic: str, log: ClickLog) -> None:
    """The log's clicks as the worker's clicks topic holds them (keyed by session id, the logged time
    as timestamp), in time order, with two malformed messages among them."""
    admin = AIOKafkaAdminClient(**aiokafka_client_kwargs(settings))
    await admin.start()
    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    await admin.close()
    producer = kafka_producer(settings, linger_ms=5)
    await producer.start()
    try:
        pending = [await producer.send(topic, value, key=key) for key, value in MALFORMED]
        for index in np.argsort(log.times, kind="stable"):
            click = {
                "session_id": log.session_ids[index],
                "item_id": log.item_ids[index],
                "timestamp": log.times[index],
            }
            pending.append(
                await producer.send(topic, json.dumps(click).encode(), key=click["session_id"].encode())
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def clicks_topic(broker: EmbeddedBroker) -> tuple[Settings, str, ClickLog, ClickLog]:
    """A topic holding the real slice's train and test clicks; the file logs they came from."""
    train, test = load_dataset("yoochoose_rsc15_100k")
    train, test = train.head_sessions(TRAIN_SESSIONS), test.head_sessions(TEST_SESSIONS)
    both = ClickLog(
        *(
            np.concatenate([a, b])
            for a, b in [
                (train.session_ids, test.session_ids),
                (train.item_ids, test.item_ids),
                (train.times, test.times),
            ]
        ),
        source="slice",
    )
    settings = Settings(bootstrap_servers=broker.bootstrap_servers)
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    asyncio.run(fill_topic(settings, topic, both))
    return settings, topic, train, test


def test_the_topic_gives_the_sessions_the_files_give(
    clicks_topic: tuple[Settings, str, ClickLog, ClickLog],
) -> None:
    settings, topic, train, test = clicks_topic
    read = asyncio.run(read_topic(settings, topic, progress=False))
    assert read.skipped == {"bad_json": 1, "key_mismatch": 1}
    log = click_log(read)
    first_times = log.times[log.session_offsets()[:-1]]
    assert np.all(np.diff(first_times) >= 0), "sessions ordered by their first click"
    from_topic = split_holdout(log, 86_400)
    assert [sessions_of(part) for part in from_topic] == [sessions_of(train), sessions_of(test)]
    assert topic in from_topic[0].source


def test_a_time_window_or_offset_ranges_select_the_clicks(
    clicks_topic: tuple[Settings, str, ClickLog, ClickLog],
) -> None:
    settings, topic, train, _ = clicks_topic
    since, until = np.quantile(train.times, [0.25, 0.5])
    window = asyncio.run(read_topic(settings, topic, since=since, until=until, progress=False))
    expected = np.sort(train.times[(train.times >= since) & (train.times < until)])
    assert sorted(click.timestamp for click in window.clicks) == expected.tolist()

    ranges = asyncio.run(read_topic(settings, topic, offsets={0: (1, 11), 2: (5, None)}, progress=False))
    everything = asyncio.run(read_topic(settings, topic, progress=False))
    assert ranges.clicks == [
        click
        for click in everything.clicks
        if (click.partition == 0 and 1 <= click.offset < 11) or (click.partition == 2 and click.offset >= 5)
    ]
    assert {click.partition for click in ranges.clicks} == {0, 2}


def test_retrain_from_the_topic_pushes_gates_promotes_and_announces(
    clicks_topic: tuple[Settings, str, ClickLog, ClickLog],
    tiny_retrain: Callable[..., Any],
    kafka_client: Any,
    tmp_path: Path,
) -> None:
    settings, topic, _, _ = clicks_topic
    updates = f"model-updates-{uuid.uuid4().hex[:8]}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("NEXTCLICK_")} | {
        "NEXTCLICK_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "NEXTCLICK_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "NEXTCLICK_MODEL_UPDATES_TOPIC": updates,
    }
    run = tiny_retrain("--from-topic", topic, env=env)
    assert "2 invalid click messages skipped (bad_json: 1, key_mismatch: 1)" in run.stdout

    store = ArtifactStore(tmp_path / "artifacts", tmp_path / "cache", 2)
    [version] = store.versions()
    assert store.current().version == version and store.current().action == "promote"
    gate = store.manifest(version)["quality_gate"]
    assert gate["passed"] and gate["current"] is None and gate["held_out"]["sessions"] == TEST_SESSIONS
    metrics = json.loads((store.local_copy(version) / "metrics.json").read_text())
    assert topic in metrics["data"]["train_source"] and metrics["data"]["train_sessions"] == TRAIN_SESSIONS
    assert not (tmp_path / "artifacts" / "staging" / version).exists()
    [announcement] = kafka_client(settings).consume(updates, 1)
    assert json.loads(announcement.value) | {"updated_at": 0} == {
        "version": version,
        "action": "promote",
        "store": str(tmp_path / "artifacts"),
        "updated_at": 0,
    }
