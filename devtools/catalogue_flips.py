"""Availability flips under load: a share of the catalogue changes availability every second, and every suggestion is
judged against what was available when the worker made it. Shared by tests/stream_app/worker/test_catalogue.py and
bench/catalogue.py.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from devtools.click_replay import LoggedClick, kafka_producer, rate_schedule, send_clicks, suggestion_consumer
from stream_app.settings import Settings


def catalogue_record(available: bool, **attributes: object) -> bytes:
    """A catalogue record's value (`stream_app/catalogue.schema.json`)."""
    return json.dumps({"available": available} | attributes).encode()


@dataclass
class FlipLog:
    """Each flipped item's records in the order they were sent: (time.time() just before the send, available)."""

    timeline: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    records: int = 0

    def hidden_for(self, item_id: str, at: float) -> float:
        """How long `item_id` had been unavailable at `at` (Unix s), by its records' send times; 0.0 if available."""
        events = self.timeline.get(item_id)
        if not events:
            return 0.0
        position = bisect.bisect_right(events, (at, True)) - 1
        if position < 0 or events[position][1]:
            return 0.0
        return at - events[position][0]  # flips alternate: the record before it made the item available

    def lateness(self, suggestion: dict) -> float:
        """The longest time any item of `suggestion` had been unavailable when the worker produced it (0.0: none)."""
        return max((self.hidden_for(item, suggestion["produced_at"]) for item in suggestion["items"]), default=0.0)


async def flip_availability(producer: AIOKafkaProducer, topic: str, items: Sequence[str], share: float,
                            seconds: float, log: FlipLog, seed: int = 37) -> None:
    """For `seconds`, once a second, flip the availability of a random `share` of `items` (all available at the
    start), each flip one record sent with the time it left in `log`."""
    rng = random.Random(seed)
    available = dict.fromkeys(items, True)
    started = time.monotonic()
    for tick in range(int(seconds)):
        await asyncio.sleep(max(0.0, started + tick - time.monotonic()))
        pending = []
        for item in rng.sample(list(items), max(1, int(share * len(items)))):
            available[item] = not available[item]
            log.timeline.setdefault(item, []).append((time.time(), available[item]))
            pending.append(await producer.send(topic, catalogue_record(available[item]), key=item.encode()))
        log.records += len(pending)
        await asyncio.gather(*pending)


@dataclass
class FlipVerdict:
    """The suggestions read back during a flip run, judged against `FlipLog`."""

    top_k: int
    answered: set[tuple[int, int]] = field(default_factory=set)  # (partition, offset) of each click answered
    suggestions: int = 0
    short: int = 0  # suggestions with fewer than top_k items
    lateness: list[float] = field(default_factory=list)  # per suggestion holding an unavailable item: how long

    def observe(self, suggestion: dict, log: FlipLog) -> None:
        self.suggestions += 1
        self.answered.add((suggestion["click"]["partition"], suggestion["click"]["offset"]))
        self.short += len(suggestion["items"]) < self.top_k
        if (late := log.lateness(suggestion)) > 0:
            self.lateness.append(late)


async def flips_under_load(settings: Settings, clicks: Sequence[LoggedClick], rate: float, share: float,
                           items: Sequence[str]) -> tuple[FlipLog, FlipVerdict, int]:
    """Send `clicks` at `rate` to a running worker (`settings`) while `share` of `items` flips every second; returns
    the flips, the verdict on every suggestion read back, and the number of clicks sent."""
    log, verdict = FlipLog(), FlipVerdict(settings.top_k)
    producer, consumer = kafka_producer(settings, linger_ms=5), suggestion_consumer(settings)
    await producer.start()
    await consumer.start()

    async def receive() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    verdict.observe(json.loads(record.value), log)

    receiving = asyncio.create_task(receive())
    sent: list[LoggedClick] = []
    try:
        seconds = len(clicks) / rate
        flipping = asyncio.create_task(flip_availability(producer, settings.catalogue_topic, items, share,
                                                         seconds, log))
        await send_clicks(producer, settings.clicks_topic, clicks, rate_schedule(len(clicks), rate),
                          lambda click, sent_at: sent.append(click))
        await flipping
        deadline = time.monotonic() + 60
        while len(verdict.answered) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        await producer.stop()
        await consumer.stop()
    return log, verdict, len(sent)
