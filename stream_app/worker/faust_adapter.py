"""Where nextclick's faust app differs from a stock one.

1. faust files a table write under "the current event"'s partition (changelog and RocksDB
   store alike), which an agent taking batches (`ready_batches`) does not have. `event_context`
   supplies it for writes made on behalf of an event of the batch.
2. The eviction timer deletes with no event at all: `KeyPartitionedTable` sends the tombstone
   to the key's own partition. faust's `use_partitioner=True` would ask the producer, which
   fails until it happens to hold metadata for the changelog topic.
3. faust hard-codes `fetch_max_wait_ms=1500` for its worker consumer. Real Kafka answers a
   fetch as soon as data is there, so that only bounds idle polls; brokers that sit out the
   whole long poll (Tansu, the embedded test broker) add up to 1.5 s to every click instead.
4. A worker that starts (or rebalances) with a backlog could lose part of it: 1 to ~150
   consecutive clicks of a partition never reached the agent, and the partition's committed
   offset stayed stuck just below them (faust-streaming#596, open). `Recovery.on_recovery_completed`
   resumes the stream partitions while the consumer's flow is still running (it was resumed for
   the changelog), awaits `Consumer.perform_seek`, and only then calls `flow_control.resume()`,
   which *clears* the streams' queues. Whatever the fetcher handed to the streams in between is
   discarded unprocessed, and the seek does not bring it back: it may run before those records
   were fetched, and they moved `_read_offset` on, so re-fetched copies are dropped as already
   read (`DROPPED MESSAGE ROFF` with DEVLOG=1). `_Consumer.perform_seek` therefore stops the
   consumer's flow before it seeks, as a faust rebalance does before its seeks: nothing more
   reaches the streams, a fetch still in flight is thrown away by `Consumer.getmany` (which seeks
   again), the seek lands after everything that was handed over, and the caller's `resume_flow()`
   restarts fetching at the committed offsets, after the queues were cleared. `resume_flow` also
   restores the read offsets the seek set, in case the fetch loop moved one on while stopping.
   At least once holds: records the agent already processed come again, and the worker answers
   repeats by offset (`stream_app.inference.sessions`).
5. faust hands each fetched record to the streams with `Service.wait_first(deliver(record),
   suspend_flow.wait())`, so that a rebalance can interrupt a delivery stuck on a full stream
   queue: four tasks and an `asyncio.wait` per record, ~20 µs, a tenth of the worker's CPU per
   click. `_Consumer.wait_first` runs the delivery's first step in place; a delivery that finishes
   without waiting (the stream's queue has room: nearly always) then costs no task at all, and
   one that would wait goes on as a task in mode's race, as before.
6. `stream.take_events(n, within)` runs every event through the stream's iterator (an event-loop
   round trip per event, sensors, processors) and then waits out `within` unless n arrived, while
   the agent's last batch blocks the next one from filling. `ready_batches` takes, from the
   queue the topic delivers into, what is there now (up to n; waiting only for the first), and
   keeps what faust's stream iterator does for the commit: messages of an older consumer
   generation (fetched before a rebalance) are acked unprocessed, as the stream skips them; the
   others are tracked as unacked and acked once the agent is done with the batch.
7. faust's own view of the committed offsets (`Consumer._committed_offset`) moves on even when a
   commit failed because the group rebalanced meanwhile. `TunedApp.committed_offsets` holds only
   offsets the broker accepted: no click below its partition's entry is ever delivered again (unless
   an operator resets the group's offsets), so a session's state need not remember those clicks'
   offsets.
"""

from __future__ import annotations

import time
import types
import weakref
from collections.abc import AsyncIterator, Generator, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import aiokafka
import faust
import faust.streams
import faust.tables
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service
from mode.services import WaitArgT, WaitResults

from stream_app.inference.partitioning import partition_for_key


@contextmanager
def event_context(event: faust.EventT) -> Iterator[None]:
    """Make `event` faust's current event, as it is inside a per-event `async for` loop."""
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


async def ready_batches(stream: faust.StreamT, max_events: int) -> AsyncIterator[list[faust.EventT]]:
    """Batches of the events a topic's stream has been handed, whatever is there (docstring, item 6)."""
    app = stream.app
    queue = aiter(stream.channel).queue  # the iterator clone the conductor delivers into
    unacked, acking_topics, sensors = app.consumer.unacked, app.topics.acking_topics, app.sensors
    while True:
        ready = [await queue.get()]
        while len(ready) < max_events and not queue.empty():
            ready.append(queue.get_nowait())
        events = []
        for event in ready:
            message = event.message
            if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
                event.ack()  # read again from the committed offset, by whoever owns the partition now
                continue
            if message.topic in acking_topics and not message.tracked:
                message.tracked = True
                unacked.add(message)
                fetched = message.time_in  # `_Consumer._to_message`; faust's monitor stamps it again
                sensors.on_message_in(message.tp, message.offset, message)
                message.time_in = fetched
            events.append(event)
        if not events:
            continue
        try:
            yield events
        finally:
            for event in events:
                if event.ack():
                    sensors.on_message_out(event.message.tp, event.message.offset, event.message)


class KeyPartitionedTable(faust.Table):
    """A table whose entry for key K lives on partition murmur2(K) % partitions (bytes keys)."""

    def partition_for_key(self, key: bytes) -> int:
        return partition_for_key(key, self.partitions or self.app.conf.topic_partitions)


class EagerWaitFirst(Service):
    """mode's `wait_first` race, with the first coroutine started in place (docstring, item 5)."""

    async def wait_first(self, *coros: WaitArgT, timeout: float | None = None) -> WaitResults:
        first, *others = coros
        if not isinstance(first, types.CoroutineType) or self._stopped.is_set() or self._crashed.is_set():
            return await super().wait_first(*coros, timeout=timeout)
        try:
            awaited = first.send(None)
        except StopIteration as finished:
            _close(others)
            return WaitResults([first], [finished.value], False)
        except BaseException:
            _close(others)
            raise
        return await super().wait_first(_carry_on(first, awaited), *others, timeout=timeout)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher; no public setter exists.
        consumer._fetch_max_wait_ms = int(self.app.consumer_fetch_max_wait * 1000)
        return consumer


class _Consumer(EagerWaitFirst, faust_aiokafka.Consumer):
    # Read offsets as `perform_seek` left them, for the generation it ran in (docstring, item 4).
    _sought_read_offsets: tuple[int, dict[TP, int | None]] | None = None

    def _to_message(self, tp: TP, record: Any) -> faust.types.Message:
        message = super()._to_message(tp, record)
        message.time_in = time.monotonic()  # where the worker's own time per click starts (stream_app.worker.app)
        return message

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        """Seek to the committed offsets with the flow stopped (docstring, item 4).

        `Recovery._resume_streams` and `Recovery.on_recovery_completed` call this with the flow
        running and resume it right after, once the queues are cleared; `Consumer.getmany` calls
        it with the flow already stopped, and whoever stopped it resumes it: left alone.
        """
        if not self.flow_active:
            await super().perform_seek()
            return
        self.stop_flow()
        await super().perform_seek()
        self._sought_read_offsets = (self.app.consumer_generation_id, dict(self._read_offset))

    def resume_flow(self) -> None:
        # The fetch loop may still have recorded one handed-over offset after the flow stopped.
        sought, self._sought_read_offsets = self._sought_read_offsets, None
        if sought is not None and sought[0] == self.app.consumer_generation_id:
            self._read_offset.update(sought[1])
        super().resume_flow()


async def _carry_on(coroutine: types.CoroutineType, awaited: object) -> object:
    """The rest of a coroutine whose first `send` left it awaiting `awaited`."""
    return await _drive(coroutine, awaited)


@types.coroutine
def _drive(coroutine: types.CoroutineType, awaited: object) -> Generator[object, object, object]:
    """Pass what the task sends or throws on to `coroutine`, as the task would have without us."""
    while True:
        try:
            sent = yield awaited
        except BaseException as thrown:  # a cancellation, or a future's exception
            step = coroutine.throw
            value: object = thrown
        else:
            step = coroutine.send
            value = sent
        try:
            awaited = step(value)
        except StopIteration as finished:
            return finished.value


def _close(waitables: list[WaitArgT]) -> None:
    for waitable in waitables:  # coroutines never started: close them without a "never awaited" warning
        if isinstance(waitable, types.CoroutineType):
            waitable.close()


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class _TableManager(faust.tables.TableManager):
    def on_commit(self, offsets: MutableMapping[TP, int]) -> None:
        """faust calls this only after the broker accepted a commit (docstring, item 7)."""
        super().on_commit(offsets)
        assigned = self.app.consumer.assignment()  # the partitions the commit request carried
        self.app.committed_offsets.update((tp, offset) for tp, offset in offsets.items() if tp in assigned)


class TunedApp(faust.App):
    """faust.App plus `consumer_fetch_max_wait` (seconds) for the worker's consumer, and the offsets the
    broker accepted as committed (`committed_offsets`: the next offset to read, per partition)."""

    def __init__(self, *args: Any, consumer_fetch_max_wait: float = 1.5, **kwargs: Any) -> None:
        self.consumer_fetch_max_wait = consumer_fetch_max_wait
        self.committed_offsets: dict[TP, int] = {}
        super().__init__(*args, TableManager=_TableManager, **kwargs)

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)
