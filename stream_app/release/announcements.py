"""The `model-updates` topic: promotions and canaries announced to every worker, so they swap without waiting.

A message (JSON, keyed by the store location) says what changed:

    {"version": "20261122T081335Z", "action": "promote" | "rollback", "store": "<location>",
     "updated_at": <pointer write, Unix s>}
    {"version": "20261122T081335Z", "action": "canary" | "canary-stop", "share": 0.1,
     "store": "<location>", "updated_at": <canary write, Unix s>}

A canary-stop names the canary it ended (its version, share and start). A promotion of the canary's
version ends the canary with no canary-stop message: the promotion's message is the wake-up.

It is only a wake-up call: a worker that reads one checks the store's pointers (current and canary)
at once and serves what they name, so a lost, late or repeated message changes nothing the next poll
(`model_poll_interval`) would not. Every worker must see every message, so workers read the topic
outside their consumer group (no group id, all partitions, from the end).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.kafka_topics import ensure_topic
from stream_app.release.store import Canary, Pointer
from stream_app.settings import Settings

logger = logging.getLogger(__name__)

ANNOUNCE_TIMEOUT = 15.0  # seconds: a promotion never hangs on an unreachable broker (workers poll anyway)


async def announce(settings: Settings, pointer: Pointer, store: str) -> bool:
    """Publish `pointer` on the model-updates topic; False (and a warning) when that failed or is off."""
    return await _publish(
        settings,
        {"version": pointer.version, "action": pointer.action, "store": store, "updated_at": pointer.updated_at},
    )


async def announce_canary(settings: Settings, canary: Canary, store: str, *, stopped: bool = False) -> bool:
    """Publish the start (or, `stopped`, the end) of `canary`; False (and a warning) when that failed or is off."""
    return await _publish(
        settings,
        {
            "version": canary.version,
            "action": "canary-stop" if stopped else "canary",
            "share": canary.share,
            "store": store,
            "updated_at": canary.updated_at,
        },
    )


async def _publish(settings: Settings, message: dict) -> bool:
    if not settings.model_updates_topic:
        return False

    async def send() -> None:
        await ensure_topic(settings, settings.model_updates_topic)  # one partition
        producer = AIOKafkaProducer(acks="all", **aiokafka_client_kwargs(settings))
        await producer.start()
        try:
            await producer.send_and_wait(
                settings.model_updates_topic, json.dumps(message).encode(), key=message["store"].encode()
            )
        finally:
            await producer.stop()

    try:
        await asyncio.wait_for(send(), ANNOUNCE_TIMEOUT)
    except Exception as error:
        logger.warning(
            "announcing %s %s on %s failed (%r); workers will see it at their next poll",
            message["action"],
            message["version"],
            settings.model_updates_topic,
            error,
        )
        return False
    logger.info("announced %s %s on %s", message["action"], message["version"], settings.model_updates_topic)
    return True


async def listen(settings: Settings, on_update: Callable[[dict], None]) -> None:
    """Call `on_update` with every announcement published from now on (and once with {} when
    connected); runs until cancelled."""
    await ensure_topic(settings, settings.model_updates_topic)
    consumer = AIOKafkaConsumer(
        settings.model_updates_topic,
        group_id=None,
        auto_offset_reset="latest",
        fetch_max_wait_ms=int(settings.consumer_fetch_max_wait * 1000),
        **aiokafka_client_kwargs(settings),
    )
    await consumer.start()
    on_update({})  # what was announced before this consumer had its position: check once now
    try:
        async for record in consumer:
            try:
                on_update(json.loads(record.value))
            except (ValueError, TypeError) as error:
                logger.warning("ignoring a malformed model update at offset %d: %r", record.offset, error)
    finally:
        await consumer.stop()
