"""A worker killed with SIGKILL mid-stream loses no click, and its successor serves correct sessions.

Real test-day clicks are sent at a steady rate while the first worker serves them; it is killed
once part of them is answered (so some processed clicks are not yet committed) and a second worker
with the same settings takes over from the committed offsets and the table's changelog.
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
    LoggedClick,
    held_out_clicks,
    kafka_producer,
    rate_schedule,
    send_clicks,
    suggestion_consumer,
)
from devtools.embedded_broker import EmbeddedBroker
from stream_app.settings import get_settings

pytestmark = pytest.mark.broker

CLICKS = 600
RATE = 100.0  # clicks/s: the stream lasts 6 s, the crash lands in it
KILL_AFTER_ANSWERED = CLICKS // 4


async def crash_mid_stream(
    clicks: list[LoggedClick],
    launch: Callable[[str], contextlib.AbstractContextManager[Any]],
    stack: contextlib.ExitStack,
) -> tuple[dict[tuple[str, float], LoggedClick], list[dict[str, Any]]]:
    """Send `clicks` while worker 1 serves, SIGKILL it, start worker 2; return what was sent and seen.

    Returns the clicks by (session id, timestamp) in sending order, and every suggestion received.
    """
    first = await asyncio.to_thread(stack.enter_context, launch("first"))
    sent: dict[tuple[str, float], LoggedClick] = {}
    producer = kafka_producer(first.settings)
    await producer.start()
    consumer = suggestion_consumer(first.settings)
    await consumer.start()
    suggestions: list[dict[str, Any]] = []

    def answered() -> int:
        return len({(s["session_id"], s["click"]["timestamp"]) for s in suggestions})

    async def receive_until(done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            suggestions.extend(json.loads(r.value) for records in batches.values() for r in records)

    try:
        sending = asyncio.create_task(
            send_clicks(
                producer,
                first.settings.clicks_topic,
                clicks,
                rate_schedule(len(clicks), RATE),
                lambda click, sent_at: sent.__setitem__((click.session_id, sent_at), click),
            )
        )
        await receive_until(lambda: answered() >= KILL_AFTER_ANSWERED, timeout=20)
        first.process.kill()
        first.process.wait()
        assert not sending.done(), "the crash came too late to be mid-stream"
        await asyncio.to_thread(stack.enter_context, launch("second"))
        await sending
        await receive_until(lambda: answered() == len(clicks), timeout=30)
        # Repeats of uncommitted clicks may still be on their way: let the topic settle.
        await receive_until(lambda: False, timeout=1)
    finally:
        await producer.stop()
        await consumer.stop()
    return sent, suggestions


def test_a_killed_worker_loses_no_click_and_its_successor_matches_the_offline_model(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    offline_items: Callable[[list[str]], list[str]],
    tmp_path: Path,
) -> None:
    clicks = held_out_clicks(get_settings(), CLICKS)
    fields = worker_fields(broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact)

    def launch(name: str) -> contextlib.AbstractContextManager[Any]:
        return launch_worker(fields, tmp_path / f"{name}.log", require_model=True)

    with contextlib.ExitStack() as stack:
        sent, suggestions = asyncio.run(crash_mid_stream(clicks, launch, stack))

    by_click: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for suggestion in suggestions:
        by_click[(suggestion["session_id"], suggestion["click"]["timestamp"])].append(suggestion)
    missing = [key for key in sent if key not in by_click]
    assert not missing, f"{len(missing)} of {len(sent)} clicks got no suggestion: {missing[:5]}"
    assert by_click.keys() <= sent.keys(), "suggestions for clicks never sent"
    for repeats in by_click.values():
        assert all(r["items"] == repeats[0]["items"] for r in repeats), repeats

    # Every session as the offline model sees it, whichever worker answered.
    history: dict[str, list[str]] = defaultdict(list)
    for (session_id, sent_at), click in sent.items():  # in sending order
        history[session_id].append(click.item_id)
        for suggestion in by_click[(session_id, sent_at)]:
            assert suggestion["items"] == offline_items(history[session_id]), (
                session_id,
                history[session_id],
            )
