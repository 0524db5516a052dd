"""A successor restores every session's last state from the table's changelog, whatever the producer batched.

The worker hands a micro-batch's session states to its producer, which sends a partition's states in one batch.
The embedded broker lists a partition's end as its last batch's first offset + 1 (docs/operations.md, "The
embedded broker"), so a recovery that reads up to the listed end stops after the first state of such a batch.
Here the first clicks of many sessions come in one burst, so their states end the changelog in batches of
several records; once they are committed the worker is killed, and a successor with an empty table serves each
session's second click: as the offline model does after both clicks, which it can only from the state written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devtools.click_replay import LoggedClick, held_out_clicks, kafka_producer, send_clicks, suggestion_consumer
from devtools.embedded_broker import EmbeddedBroker
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.partition_ends import checked_ends
from stream_app.settings import Settings, get_settings
from tests.stream_app.worker.membership import side_by_side

pytestmark = pytest.mark.broker

SESSIONS = 40
PARTITIONS = 2
BURST_LINGER = 0.05  # s: the producers' linger, so that a burst and the states it makes surely share batches


def first_two_clicks(clicks: list[LoggedClick], sessions: int) -> tuple[list[LoggedClick], list[LoggedClick]]:
    """The first and second click of the first `sessions` sessions with two clicks or more."""
    by_session: dict[str, list[LoggedClick]] = {}
    for click in clicks:
        by_session.setdefault(click.session_id, []).append(click)
    pairs = [session[:2] for session in by_session.values() if len(session) >= 2][:sessions]
    return [first for first, _ in pairs], [second for _, second in pairs]


async def serve(settings: Settings, clicks: list[LoggedClick]) -> dict[str, dict[str, Any]]:
    """Send `clicks` in one burst; each session's suggestion for its click sent here, by session id."""
    producer, consumer = kafka_producer(settings, linger_ms=int(BURST_LINGER * 1000)), suggestion_consumer(settings)
    await producer.start()
    await consumer.start()
    sent: dict[str, float] = {}
    answers: dict[str, dict[str, Any]] = {}
    try:
        await send_clicks(producer, settings.clicks_topic, clicks, None,
                          lambda click, sent_at: sent.__setitem__(click.session_id, sent_at))
        async with asyncio.timeout(60):
            while len(answers) < len(clicks):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for suggestion in (json.loads(record.value) for record in records):
                        if suggestion["click"]["timestamp"] == sent.get(suggestion["session_id"]):
                            answers[suggestion["session_id"]] = suggestion
    finally:
        await producer.stop()
        await consumer.stop()
    return answers


async def listed_and_true_ends(settings: Settings, partitions: list[TopicPartition]
                               ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """The partitions' ends as the broker lists them, and as their fetches' high watermarks say."""
    consumer = AIOKafkaConsumer(**aiokafka_client_kwargs(settings))
    await consumer.start()
    try:
        listed = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return listed, await checked_ends(settings.model_copy(update={"broker_end_offsets": "fetch"}), listed)


def test_a_successor_restores_states_that_ended_the_changelog_in_one_batch(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    offline_items: Callable[[list[str]], list[str]],
    tmp_path: Path,
) -> None:
    firsts, seconds = first_two_clicks(held_out_clicks(get_settings()), SESSIONS)
    fields = worker_fields(broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact, partitions=PARTITIONS,
                           producer_linger=BURST_LINGER)
    launch = side_by_side(launch_worker, fields, tmp_path)
    with launch("first") as first:
        settings = first.settings
        assert len(asyncio.run(serve(settings, firsts))) == SESSIONS
        _, clicks_ends = asyncio.run(listed_and_true_ends(settings, [
            TopicPartition(settings.clicks_topic, p) for p in range(PARTITIONS)]))
        first.wait_until(lambda: all(first.committed(settings.app_id, tp.topic, tp.partition) == end
                                     for tp, end in clicks_ends.items()), what="the burst's offsets committed")
        first.process.kill()
        first.process.wait()

    changelog = [TopicPartition(f"{settings.app_id}-sessions-changelog", p) for p in range(PARTITIONS)]
    listed, ends = asyncio.run(listed_and_true_ends(settings, changelog))
    assert listed != ends, f"no changelog partition ended in a batch of several states ({listed}): nothing tested"

    with launch("second"):
        answers = asyncio.run(serve(settings, seconds))
    wrong = [second.session_id for first_click, second in zip(firsts, seconds, strict=True)
             if answers[second.session_id]["items"] != offline_items([first_click.item_id, second.item_id])]
    assert not wrong, f"{len(wrong)} of {SESSIONS} sessions served without their last state: {wrong[:5]}"
