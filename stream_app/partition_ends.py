"""Where a partition ends (the offset its next record gets), right on Kafka and on the embedded broker.

Kafka answers ListOffsets(latest) with it. The embedded broker (Tansu) answers with its last record batch's first
offset + 1, short of the end when that batch holds several records, while a fetch's high watermark is right. With
`NEXTCLICK_BROKER_END_OFFSETS=fetch` (the embedded broker's tuning) each listed end is therefore checked by one
fetch from the offset before it, which returns the last batch and the partition's high watermark. The tables'
changelog recovery (through `stream_app.worker.faust_adapter`), the consumer lag and every reader that must know
when it has read a topic to its end take their ends from here. Why: docs/operations.md, "The embedded broker".
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.settings import Settings

Partition = TypeVar("Partition", bound=tuple[str, int])  # aiokafka's TopicPartition, or faust's TP: (topic, partition)

FETCH_TIMEOUT = 10.0  # s: the checking fetches' answers, which the broker has at hand


async def partition_ends(
    consumer: AIOKafkaConsumer, partitions: Collection[TopicPartition], settings: Settings
) -> dict[TopicPartition, int]:
    """The end of each of `partitions`, as `consumer` lists it, checked by a fetch where the settings ask for it."""
    return await checked_ends(settings, await consumer.end_offsets(list(partitions)))


async def checked_ends(settings: Settings, listed: Mapping[Partition, int]) -> dict[Partition, int]:
    """The `listed` ends (from ListOffsets), each replaced by its fetch's high watermark with `fetch`."""
    ends = dict(listed)
    to_check = {TopicPartition(*tp): tp for tp, end in listed.items() if end > 0}  # an empty partition has no batch
    if settings.broker_end_offsets == "list" or not to_check:
        return ends
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=int(settings.consumer_fetch_max_wait * 1000),
        client_id=f"{settings.app_id}-partition-ends",
        **aiokafka_client_kwargs(settings),
    )
    await consumer.start()
    try:
        consumer.assign(list(to_check))
        for tp, own in to_check.items():
            consumer.seek(tp, listed[own] - 1)
        async with asyncio.timeout(FETCH_TIMEOUT):
            while (unknown := [tp for tp in to_check if consumer.highwater(tp) is None]):
                await consumer.getmany(*unknown, timeout_ms=int(FETCH_TIMEOUT * 1000))
        return ends | {own: consumer.highwater(tp) for tp, own in to_check.items()}
    finally:
        await consumer.stop()
