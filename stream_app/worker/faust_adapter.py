"""Every reach into faust's, aiokafka's and mode's internals, each with its reason in a line or two.

The reasoning in full: docs/stream_performance.md, "Where the worker patches faust". What each patch relies on
is checked at the pinned versions by tests/stream_app/worker/test_faust_adapter.py, so an upgrade fails there first.

1. `event_context`: faust files a table write under the current event's partition, which an agent taking
   batches does not have; it is set for writes made on behalf of one event of the batch.
2. `KeyPartitionedTable`: a delete with no event at all (the eviction timer) sends its tombstone to the key's
   own partition; faust's `use_partitioner=True` fails until the producer holds the changelog's metadata.
3. `_ConsumerThread`: the worker consumer's fetch wait is a setting; faust hard-codes 1.5 s, which brokers that
   sit out the whole long poll (Tansu) add to every click.
4. `_Consumer.perform_seek` / `resume_flow`: a worker that starts or rebalances with a backlog loses none of it
   (faust-streaming#596, open): the seek to the committed offsets runs with the consumer's flow stopped.
5. `EagerWaitFirst`: a record's delivery to the streams runs in place, not as tasks in mode's `wait_first` race,
   unless it has to wait; in the race each record reaches the queue in an event-loop step of its own, and
   `ready_batches` would take batches of one.
6. `ready_batches`: batches of what the topic has delivered, not `stream.take_events`, with the stream
   iterator's commit bookkeeping, and its end on a stop (faust throws StopAsyncIteration into the queue).
7. `TunedApp.committed_offsets`: only offsets the broker accepted (commits, and what a seek read back from it);
   faust's own `Consumer._committed_offset` also moves on a commit that failed.
8. `send_record`: faust's producer `send` takes its arguments by position, with no defaults.
9. `recovered_once`: faust tells whether its tables finished their first recovery only by an awaitable.
10. `_Consumer._to_message`: a record is stamped when the consumer hands it over, where the worker's own time
    per click starts; faust's monitor stamps it when the stream takes it, after its wait in faust's queue.
11. `_Consumer.highwaters`: the partition ends that changelog recovery reads up to (and the consumer lag counts
    from) go through the app's `partition_ends` check. faust lists them (ListOffsets), which the embedded broker
    answers short of a last batch of several records: a new owner missed a partition's last session states.
"""

from __future__ import annotations

import asyncio
import time
import types
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, MutableMapping
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
    """Make `event` faust's current event, as it is inside a per-event `async for` loop (docstring, item 1)."""
    # faust keeps it in a private ContextVar, as a weak reference (`faust.streams.current_event`)
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


async def ready_batches(stream: faust.StreamT, max_events: int) -> AsyncIterator[list[faust.EventT]]:
    """Batches of the events a topic's stream has been handed, whatever is there (docstring, item 6)."""
    app = stream.app
    # the stream iterator's own bookkeeping (faust.streams.Stream.__aiter__), done here per batch
    queue = aiter(stream.channel).queue  # the iterator clone the conductor delivers into
    unacked, acking_topics, sensors = app.consumer.unacked, app.topics.acking_topics, app.sensors
    while True:
        try:
            ready = [await queue.get()]
            while len(ready) < max_events and not queue.empty():
                ready.append(queue.get_nowait())
        except StopAsyncIteration:
            # faust stops an agent by throwing StopAsyncIteration into its channel's queue (`Actor.cancel`), which
            # faust's own iterator catches; raised out of an async generator it would become a RuntimeError (PEP
            # 479) and crash the agent. Events taken but not yet yielded are not acked: read again after a restart.
            return
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


async def send_record(
    app: faust.App, topic: str, key: bytes, value: bytes, partition: int | None = None
) -> asyncio.Future:
    """Hand one record to faust's producer, where its flush before a commit waits for it (docstring, item 8).

    Returns the delivery's future, not awaited here."""
    # faust's Producer.send has no defaults: partition, timestamp and headers go in that order
    return await app.producer.send(topic, key, value, partition, None, None)


def recovered_once(app: faust.App) -> bool:
    """Whether the tables finished their first recovery since the worker started (docstring, item 9)."""
    # `Recovery.completed`: set once, never cleared; faust offers only an awaitable of it
    return app.tables.recovery.completed.is_set()


class KeyPartitionedTable(faust.Table):
    """A table whose entry for key K lives on partition murmur2(K) % partitions (bytes keys; docstring, item 2)."""

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
        message.time_in = time.monotonic()  # where the worker's own time per click starts (docstring, item 10)
        return message

    def _new_consumer_thread(self) -> _ConsumerThread:
        # faust names the thread class nowhere else (docstring, item 3)
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

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """faust's `perform_seek` asks the broker for the committed offsets here: keep them (docstring, item 7)."""
        offsets = await super().seek_to_committed()
        self.app.committed_offsets.update(
            (TP(tp.topic, tp.partition), offset) for tp, offset in offsets.items() if offset is not None and offset >= 0
        )
        return offsets

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        """Each partition's end as faust lists it, checked by the app's `partition_ends` (docstring, item 11)."""
        listed = await super().highwaters(*partitions)
        return listed if self.app.partition_ends is None else await self.app.partition_ends(listed)

    def resume_flow(self) -> None:
        # `_read_offset`: what faust's fetch loop drops as already read (docstring, item 4).
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
    Consumer = _Consumer  # how faust's transport picks its consumer class


class _TableManager(faust.tables.TableManager):
    def on_commit(self, offsets: MutableMapping[TP, int]) -> None:
        """faust calls this only after the broker accepted a commit (docstring, item 7)."""
        super().on_commit(offsets)
        assigned = self.app.consumer.assignment()  # the partitions the commit request carried
        self.app.committed_offsets.update((tp, offset) for tp, offset in offsets.items() if tp in assigned)


#: Checks the partition ends faust listed, returning them right (`stream_app.partition_ends.checked_ends`).
EndsCheck = Callable[[Mapping[TP, int]], Awaitable[Mapping[TP, int]]]


class TunedApp(faust.App):
    """faust.App plus `consumer_fetch_max_wait` (seconds) for the worker's consumer, `partition_ends` for the ends
    its tables recover up to (None: as faust lists them), and the offsets the broker accepted as committed
    (`committed_offsets`: the next offset to read, per partition)."""

    def __init__(
        self, *args: Any, consumer_fetch_max_wait: float = 1.5, partition_ends: EndsCheck | None = None, **kwargs: Any
    ) -> None:
        self.consumer_fetch_max_wait = consumer_fetch_max_wait
        self.partition_ends = partition_ends
        self.committed_offsets: dict[TP, int] = {}
        super().__init__(*args, TableManager=_TableManager, **kwargs)

    def _new_transport(self) -> _Transport:
        # faust picks the transport by the broker URL's scheme, with no setting for the class (items 3, 4, 5, 10, 11)
        return _Transport(self.conf.broker_consumer, self)
