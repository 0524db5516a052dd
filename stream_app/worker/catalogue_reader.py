"""The catalogue topic, read whole by every worker into its item table (`stream_app.inference.catalogue`).

A consumer without a group reads every partition of the topic from the beginning when the worker starts, then
follows it live; `loaded` is set once it has read up to the ends the partitions had at its start (the worker
serves no click before: docs/serving.md, Catalogue and rules). Not faust's GlobalTable: that reads its changelog
as standby partitions of the worker's consumer group, so it is tied to the group's rebalances (and reported
incomplete with several workers, faust-streaming#283, #212); it decodes values with faust's codecs, with no
route to the dead-letter topic for a bad record; and it keeps every value as a Python object, where the item
table keeps a byte and a code per item. Bad records are dead-lettered by every worker that reads them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from stream_app.inference.catalogue import Catalogue
from stream_app.inference.catalogue_records import InvalidItemRecord, parse_item_record
from stream_app.inference.events import Reason
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.kafka_topics import ensure_topic
from stream_app.partition_ends import partition_ends
from stream_app.settings import Settings
from stream_app.worker.metrics import WorkerMetrics, latency_observable
from stream_app.worker.retrying import read_forever

logger = logging.getLogger(__name__)

COMPACTED = {"cleanup.policy": "compact"}
RECORDS_PER_STEP = 2_000  # records applied between two yields to the event loop (a few ms)


async def ensure_catalogue_topic(settings: Settings) -> None:
    """Create the compacted catalogue topic (one partition) unless it exists."""
    await ensure_topic(settings, settings.catalogue_topic, config=COMPACTED)


class CatalogueReader:
    """Keeps `catalogue` equal to what the catalogue topic says; dead-letters the records it cannot apply."""

    def __init__(self, settings: Settings, catalogue: Catalogue, metrics: WorkerMetrics,
                 dead_letter: Callable[[ConsumerRecord, InvalidItemRecord], Awaitable[bool]]) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.metrics = metrics
        self.dead_letter = dead_letter  # True once the broker took the dead letter
        self.loaded = asyncio.Event()
        self.partitions: int | None = None  # the topic's, when the worker started reading it (None: not yet known)
        metrics.catalogue_items.set_function(lambda: catalogue.items)

    async def run(self) -> None:
        """Read the topic for as long as the worker runs, starting over after an error (records are idempotent)."""
        await read_forever(self._read, self.metrics, "catalogue",
                           f"the catalogue topic {self.settings.catalogue_topic}")

    async def _read(self) -> None:
        await ensure_catalogue_topic(self.settings)
        consumer = AIOKafkaConsumer(
            self.settings.catalogue_topic,
            group_id=None,  # every worker reads every partition
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=int(self.settings.catalogue_fetch_max_wait * 1000),
            client_id=f"{self.settings.app_id}-catalogue",
            **aiokafka_client_kwargs(self.settings),
        )
        await consumer.start()
        try:
            ends: dict[TopicPartition, int] | None = None
            started = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=RECORDS_PER_STEP)
                for records in batches.values():
                    for record in records:
                        await self._apply(record)
                if self.loaded.is_set():
                    continue
                if ends is None and consumer.assignment():  # the partitions the topic had at the start
                    ends = await partition_ends(consumer, consumer.assignment(), self.settings)
                    self.partitions = len(ends)
                if ends is not None and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                    self.loaded.set()
                    logger.info("catalogue %s read to its end: %d items with a record, in %.2f s",
                                self.settings.catalogue_topic, self.catalogue.items, time.monotonic() - started)
        finally:
            await consumer.stop()

    async def _apply(self, record: ConsumerRecord) -> None:
        try:
            limit = self.settings.catalogue_max_record_bytes
            item_id, item = parse_item_record(record.key, record.value, max_bytes=limit)
            self.catalogue.apply(item_id, item)
        except InvalidItemRecord as refusal:
            if await self.dead_letter(record, refusal):
                self.metrics.catalogue_dead_letters.labels(reason=str(refusal.reason)).inc()
            return
        except Exception as exc:  # a bug must cost one record, not the catalogue
            self.metrics.errors.labels(stage="catalogue").inc()
            logger.exception("applying %s[%d]@%d failed", record.topic, record.partition, record.offset)
            if await self.dead_letter(record, InvalidItemRecord(Reason.PROCESSING_ERROR, repr(exc)[:200])):
                self.metrics.catalogue_dead_letters.labels(reason=str(Reason.PROCESSING_ERROR)).inc()
            return
        now = time.time()
        stamped = record.timestamp / 1000
        if self.loaded.is_set() and latency_observable(now, stamped):
            self.metrics.catalogue_propagation.observe(max(0.0, now - stamped))
