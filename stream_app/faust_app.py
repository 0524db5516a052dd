"""Where nextclick's faust app differs from a stock one.

1. faust files a table write under "the current event"'s partition (changelog and RocksDB
   store alike), which an agent iterating `stream.take_events` does not have. `event_context`
   supplies it for writes made on behalf of an event of the batch.
2. The eviction timer deletes with no event at all: `KeyPartitionedTable` sends the tombstone
   to the key's own partition. faust's `use_partitioner=True` would ask the producer, which
   fails until it happens to hold metadata for the changelog topic.
3. faust hard-codes `fetch_max_wait_ms=1500` for its worker consumer. Real Kafka answers a
   fetch as soon as data is there, so that only bounds idle polls; brokers that sit out the
   whole long poll (Tansu, the embedded test broker) add up to 1.5 s to every click instead.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiokafka
import faust
import faust.streams
from faust.transport.drivers import aiokafka as faust_aiokafka

from stream_app.partitioning import partition_for_key


@contextmanager
def event_context(event: faust.EventT) -> Iterator[None]:
    """Make `event` faust's current event, as it is inside a per-event `async for` loop."""
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


class KeyPartitionedTable(faust.Table):
    """A table whose entry for key K lives on partition murmur2(K) % partitions (bytes keys)."""

    def partition_for_key(self, key: bytes) -> int:
        return partition_for_key(key, self.partitions or self.app.conf.topic_partitions)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher; no public setter exists.
        consumer._fetch_max_wait_ms = int(self.app.consumer_fetch_max_wait * 1000)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class TunedApp(faust.App):
    """faust.App plus `consumer_fetch_max_wait` (seconds) for the worker's consumer."""

    def __init__(self, *args: Any, consumer_fetch_max_wait: float = 1.5, **kwargs: Any) -> None:
        self.consumer_fetch_max_wait = consumer_fetch_max_wait
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)
