"""Workers coming and going under a steady stream of real clicks, and the check that nothing changed for the user.

The crash-recovery and scale-out tests share this driver: clicks are sent at a fixed rate while a list of
steps (a worker joins, is SIGKILLed, leaves) runs, each once enough clicks are answered; then every click must
have its suggestion, and each session's suggestions must be those of the offline model for its clicks so far,
whichever worker answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.click_replay import LoggedClick, kafka_producer, rate_schedule, send_clicks, suggestion_consumer
from devtools.embedded_broker import free_port

Launch = Callable[[str], contextlib.AbstractContextManager[Any]]


def side_by_side(launch_worker: Callable[..., Any], fields: dict[str, Any], tmp_path: Path) -> Launch:
    """`launch(name)`: a worker of the same group with its own web port, table folder and log."""

    def launch(name: str) -> contextlib.AbstractContextManager[Any]:
        own = fields | {"web_port": free_port(), "table_dir": tmp_path / name / "tables"}
        return launch_worker(own, tmp_path / f"{name}.log", require_model=True)

    return launch


@dataclass
class Workers:
    """The running workers by name: `launch(name)` starts one, `stack` stops them when the test ends."""

    launch: Launch
    stack: contextlib.ExitStack
    running: dict[str, Any] = field(default_factory=dict)

    def join(self, name: str) -> None:
        self.running[name] = self.stack.enter_context(self.launch(name))

    def kill(self, name: str) -> None:
        self.running[name].process.kill()
        self.running[name].process.wait()

    def leave(self, name: str) -> None:
        self.running[name].process.terminate()
        self.running[name].process.wait(30)


@dataclass(frozen=True)
class Step:
    name: str
    after_answered: int  # runs once this many clicks have their suggestion
    action: Callable[[], Any]


@dataclass
class Served:
    sent: dict[tuple[str, float], LoggedClick]  # by (session id, send time), in sending order
    suggestions: list[dict[str, Any]]
    under_load: list[str]  # the steps that ran before the last click was sent


async def serve_through(clicks: list[LoggedClick], rate: float, workers: Workers, first: str,
                        steps: list[Step]) -> Served:
    """Start worker `first`, send `clicks` at `rate` per second while `steps` run, and collect every suggestion
    until each click has one (plus a second for repeats of uncommitted clicks still on their way)."""
    await asyncio.to_thread(workers.join, first)
    settings = workers.running[first].settings
    served = Served({}, [], [])
    producer, consumer = kafka_producer(settings), suggestion_consumer(settings)
    await producer.start()
    await consumer.start()

    def answered() -> int:
        return len({(s["session_id"], s["click"]["timestamp"]) for s in served.suggestions})

    async def receive_until(done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            served.suggestions.extend(json.loads(r.value) for records in batches.values() for r in records)

    try:
        sending = asyncio.create_task(
            send_clicks(producer, settings.clicks_topic, clicks, rate_schedule(len(clicks), rate),
                        lambda click, sent_at: served.sent.__setitem__((click.session_id, sent_at), click))
        )
        for step in steps:
            await receive_until(lambda after=step.after_answered: answered() >= after, timeout=60)
            await asyncio.to_thread(step.action)
            if not sending.done():
                served.under_load.append(step.name)
        await sending
        await receive_until(lambda: answered() == len(clicks), timeout=60)
        await receive_until(lambda: False, timeout=1)
    finally:
        await producer.stop()
        await consumer.stop()
    return served


def assert_answered_as_one_worker(served: Served, offline_items: Callable[[list[str]], list[str]]) -> None:
    """Every click answered, nothing answered that was not sent, and every suggestion (repeats included) the
    offline model's for its session's clicks up to it."""
    by_click: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for suggestion in served.suggestions:
        by_click[(suggestion["session_id"], suggestion["click"]["timestamp"])].append(suggestion)
    missing = [key for key in served.sent if key not in by_click]
    assert not missing, f"{len(missing)} of {len(served.sent)} clicks got no suggestion: {missing[:5]}"
    assert by_click.keys() <= served.sent.keys(), "suggestions for clicks never sent"

    history: dict[str, list[str]] = defaultdict(list)
    for (session_id, sent_at), click in served.sent.items():  # in sending order
        history[session_id].append(click.item_id)
        for suggestion in by_click[(session_id, sent_at)]:
            assert suggestion["items"] == offline_items(history[session_id]), (
                session_id,
                history[session_id],
                [(s["click"], s["items"][:2], s["produced_at"]) for s in served.suggestions
                 if s["session_id"] == session_id],
            )
