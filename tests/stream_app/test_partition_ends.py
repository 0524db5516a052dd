"""Partition ends on the embedded broker: its listing falls short of a last batch of several records, `fetch`
reads the true end from a fetch's high watermark, and an empty partition stays at 0."""

from __future__ import annotations

import asyncio
import uuid
from typing import Literal

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devtools.embedded_broker import EmbeddedBroker
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.kafka_topics import ensure_topic
from stream_app.partition_ends import partition_ends
from stream_app.settings import Settings

pytestmark = pytest.mark.broker

BATCHES = (5, 3)  # records per producer batch, all to partition 0


async def produce_batches(settings: Settings, topic: str) -> None:
    """Partition 0 gets `BATCHES`, one producer batch each; partition 1 stays empty."""
    await ensure_topic(settings, topic, partitions=2)
    producer = AIOKafkaProducer(acks="all", linger_ms=50, **aiokafka_client_kwargs(settings))
    await producer.start()
    try:
        for size in BATCHES:
            await asyncio.gather(*[await producer.send(topic, b"r", partition=0) for _ in range(size)])
    finally:
        await producer.stop()


async def ends(settings: Settings, topic: str, how: Literal["list", "fetch"]) -> dict[int, int]:
    consumer = AIOKafkaConsumer(**aiokafka_client_kwargs(settings))
    await consumer.start()
    try:
        found = await partition_ends(consumer, [TopicPartition(topic, p) for p in (0, 1)],
                                     settings.model_copy(update={"broker_end_offsets": how}))
    finally:
        await consumer.stop()
    return {tp.partition: end for tp, end in found.items()}


def test_fetch_finds_the_end_the_listing_misses(broker: EmbeddedBroker) -> None:
    settings = Settings(bootstrap_servers=broker.bootstrap_servers)
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    asyncio.run(produce_batches(settings, topic))
    listed = asyncio.run(ends(settings, topic, "list"))
    assert listed[0] < sum(BATCHES), "the embedded broker now lists the end right: its tuning may `list` again"
    assert listed[1] == 0
    assert asyncio.run(ends(settings, topic, "fetch")) == {0: sum(BATCHES), 1: 0}
