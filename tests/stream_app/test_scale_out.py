"""Workers share the partitions: joining, crashing and leaving move sessions, never lose or change them.

Real test-day clicks are sent at a steady rate over four partitions while: one worker serves them;
a second joins (half the partitions move to it, their sessions recovered from the table's
changelog); the first is SIGKILLed (the second takes everything over, from the committed offsets);
a third joins; the second leaves cleanly (SIGTERM). Every click is answered, and each session's
suggestions are those the offline model gives for its clicks so far, as with one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.click_replay import (
    held_out_clicks,
    kafka_producer,
    rate_schedule,
    send_clicks,
    suggestion_consumer,
)
from devtools.embedded_broker import EmbeddedBroker, free_port
from stream_app.settings import get_settings

pytestmark = pytest.mark.broker

CLICKS = 1_200
RATE = 40.0  # clicks/s: the stream lasts 30 s, long enough for three workers to start in it
PARTITIONS = 4


async def serve_through_membership_changes(
    clicks: list, launch: Callable[[str], contextlib.AbstractContextManager[Any]], stack: contextlib.ExitStack
) -> tuple[dict[tuple[str, float], Any], list[dict[str, Any]], list[str]]:
    """Send `clicks` while workers come and go; return what was sent, every suggestion, and the steps
    that happened before the last click was sent."""
    first = await asyncio.to_thread(stack.enter_context, launch("first"))
    sent: dict[tuple[str, float], Any] = {}
    producer, consumer = kafka_producer(first.settings), suggestion_consumer(first.settings)
    await producer.start()
    await consumer.start()
    suggestions: list[dict[str, Any]] = []
    under_load: list[str] = []

    def answered() -> int:
        return len({(s["session_id"], s["click"]["timestamp"]) for s in suggestions})

    async def receive_until(done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            suggestions.extend(json.loads(r.value) for records in batches.values() for r in records)

    async def step(name: str, after_answered: int, action: Callable[[], Any]) -> Any:
        await receive_until(lambda: answered() >= after_answered, timeout=60)
        result = await asyncio.to_thread(action)
        if not sending.done():
            under_load.append(name)
        return result

    try:
        sending = asyncio.create_task(
            send_clicks(producer, first.settings.clicks_topic, clicks, rate_schedule(len(clicks), RATE),
                        lambda click, sent_at: sent.__setitem__((click.session_id, sent_at), click))
        )
        second = await step("second joins", CLICKS // 8, lambda: stack.enter_context(launch("second")))
        await step("first killed", CLICKS // 3, lambda: (first.process.kill(), first.process.wait()))
        await step("third joins", CLICKS // 2, lambda: stack.enter_context(launch("third")))
        await step("second leaves", 2 * CLICKS // 3, lambda: (second.process.terminate(), second.process.wait(30)))
        await sending
        await receive_until(lambda: answered() == len(clicks), timeout=60)
        await receive_until(lambda: False, timeout=1)  # repeats of uncommitted clicks may still come
    finally:
        await producer.stop()
        await consumer.stop()
    return sent, suggestions, under_load


def test_workers_joining_crashing_and_leaving_answer_every_click_as_one_worker_would(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    offline_items: Callable[[list[str]], list[str]],
    tmp_path: Path,
) -> None:
    clicks = held_out_clicks(get_settings(), CLICKS)
    fields = worker_fields(broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact, partitions=PARTITIONS)

    def launch(name: str) -> contextlib.AbstractContextManager[Any]:
        own = fields | {"web_port": free_port(), "table_dir": tmp_path / name / "tables"}
        return launch_worker(own, tmp_path / f"{name}.log", require_model=True)

    with contextlib.ExitStack() as stack:
        sent, suggestions, under_load = asyncio.run(serve_through_membership_changes(clicks, launch, stack))
    # the membership changes that must land mid-stream (the later ones may come as it ends on a slow machine)
    assert {"second joins", "first killed"} <= set(under_load), under_load

    by_click: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for suggestion in suggestions:
        by_click[(suggestion["session_id"], suggestion["click"]["timestamp"])].append(suggestion)
    missing = [key for key in sent if key not in by_click]
    assert not missing, f"{len(missing)} of {len(sent)} clicks got no suggestion: {missing[:5]}"
    assert by_click.keys() <= sent.keys(), "suggestions for clicks never sent"

    history: dict[str, list[str]] = defaultdict(list)
    for (session_id, sent_at), click in sent.items():  # in sending order
        history[session_id].append(click.item_id)
        for suggestion in by_click[(session_id, sent_at)]:
            assert suggestion["items"] == offline_items(history[session_id]), (
                session_id,
                history[session_id],
                [(s["click"], s["items"][:2], s["produced_at"]) for s in suggestions if s["session_id"] == session_id],
            )
