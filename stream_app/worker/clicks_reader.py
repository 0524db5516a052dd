"""The whole clicks topic, read into the live session index (`stream_app.inference.live_knn`) by every worker that
keeps one (NEXTCLICK_SERVING_MODEL `vsknn`, `stan` or `artifact`).

A consumer without a group reads every partition, so a worker's index holds the sessions of every partition,
not only of those it serves: any session can be any session's neighbour. At start it reads from the first click
of the last `knn_window` seconds (or the partition's start) and sets `loaded` once it has read up to the ends the
partitions had then: the worker serves no click before, so a restarted worker answers with a full index
(docs/serving.md, Session-kNN). It then follows the topic live. A click it cannot parse is skipped: the worker
that owns its partition dead-letters it. A click is indexed with its offset, and indexing it twice changes nothing
(`SessionIndex.add`), so a restart of the reader after an error reads the window again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from stream_app.inference.events import InvalidClick, parse_click
from stream_app.inference.live_knn import LiveNeighbours
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.partition_ends import partition_ends
from stream_app.settings import Settings
from stream_app.worker.metrics import WorkerMetrics
from stream_app.worker.retrying import read_forever

logger = logging.getLogger(__name__)

RECORDS_PER_STEP = 2_000  # records indexed between two yields to the event loop (a few ms)


class ClicksReader:
    """Keeps `neighbours` fed with every click of the clicks topic."""

    def __init__(self, settings: Settings, neighbours: LiveNeighbours, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.neighbours = neighbours
        self.metrics = metrics
        self.loaded = asyncio.Event()
        metrics.knn_sessions.set_function(lambda: neighbours.index.n_sessions)

    async def run(self) -> None:
        """Read the topic for as long as the worker runs, starting over after an error."""
        await read_forever(self._read, self.metrics, "knn_index",
                           f"the clicks topic {self.settings.clicks_topic} into the index")

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(
            self.settings.clicks_topic,
            group_id=None,  # every worker reads every partition
            enable_auto_commit=False,
            fetch_max_wait_ms=int(self.settings.consumer_fetch_max_wait * 1000),
            client_id=f"{self.settings.app_id}-knn-index",
            **aiokafka_client_kwargs(self.settings),
        )
        await consumer.start()
        try:
            started = time.monotonic()
            while not consumer.assignment():  # until the topic exists (the worker's faust app creates it)
                await asyncio.sleep(0.2)
            partitions = sorted(consumer.assignment())
            since = int((time.time() - self.settings.knn_window) * 1000)
            firsts = await consumer.offsets_for_times(dict.fromkeys(partitions, since))
            ends = await partition_ends(consumer, partitions, self.settings)
            for tp in partitions:
                consumer.seek(tp, ends[tp] if firsts[tp] is None else firsts[tp].offset)
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=RECORDS_PER_STEP)
                for records in batches.values():
                    for record in records:
                        self._index(record)
                if not self.loaded.is_set() and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                    self.loaded.set()
                    logger.info("session index: %d sessions of the last %.0f s of %s read in %.2f s",
                                self.neighbours.index.n_sessions, self.settings.knn_window,
                                self.settings.clicks_topic, time.monotonic() - started)
        finally:
            await consumer.stop()

    def _index(self, record: ConsumerRecord) -> None:
        # the worker indexed the clicks it served already: known by the record's key (the session id) and offset,
        # without parsing the click again
        if record.key is not None and self.neighbours.index.indexed(record.key.decode("utf-8", "replace"),
                                                                    record.offset):
            return
        try:
            click = parse_click(record.value, key=record.key, max_bytes=self.settings.max_payload_bytes)
        except InvalidClick:
            return
        self.neighbours.observe(click.session_id, click.item_id, click.timestamp, record.offset)
