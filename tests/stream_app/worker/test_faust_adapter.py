"""stream_app.worker.faust_adapter: what it relies on in faust, aiokafka and mode, and `EagerWaitFirst`'s contract.

The guard (`CHECKS`) asserts that every private name, overridden method and positional signature the adapter
uses is there, with the expected shape, at the pinned versions: an upgrade that moves one fails here first,
naming the patch. `EagerWaitFirst` keeps mode's `wait_first` race, minus the tasks for a delivery that does not
wait; the worker's consumer hands every record to the streams through it; the crash and scale-out tests cover
it end to end, these its contract."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import inspect
import re
import warnings
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import aiokafka
import faust
import faust.agents.actor
import faust.events
import faust.streams
import faust.tables
import faust.tables.base
import faust.tables.recovery
import faust.transport.base
import faust.transport.conductor
import faust.transport.consumer
import faust.types.tuples
import mode.services
import pytest
from faust.sensors import SensorDelegate
from faust.stores import rocksdb as faust_rocksdb
from faust.tables.table import Table
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service
from mode.utils.queues import ThrowableQueue

from stream_app.worker import faust_adapter
from stream_app.worker.faust_adapter import EagerWaitFirst


class Eager(EagerWaitFirst, Service):
    pass


async def at_once(value: int) -> int:
    return value


async def after(seconds: float, value: int) -> int:
    await asyncio.sleep(seconds)
    return value


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_delivery_that_does_not_wait_wins_without_starting_a_task() -> None:
    async def scenario() -> None:
        suspended = asyncio.Event()
        tasks_before = len(asyncio.all_tasks())
        delivery = at_once(7)
        result = await Eager().wait_first(delivery, suspended.wait())
        assert result.done == [delivery] and result.results == [7] and not result.stopped
        assert len(asyncio.all_tasks()) == tasks_before

    run(scenario())


def test_a_delivery_that_waits_finishes_as_in_mode() -> None:
    async def scenario() -> None:
        result = await Eager().wait_first(after(0.01, 3), asyncio.Event().wait())
        assert result.results == [3] and not result.stopped

    run(scenario())


def test_a_waiting_delivery_is_cancelled_when_the_other_side_wins() -> None:
    finished = []

    async def delivery() -> None:
        await asyncio.sleep(5)
        finished.append(True)

    async def scenario() -> None:
        suspended = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, suspended.set)
        result = await Eager().wait_first(delivery(), suspended.wait())
        assert result.results == [True]  # the suspension won
        await asyncio.sleep(0.05)

    run(scenario())
    assert not finished


def test_an_error_in_the_first_step_propagates_and_the_others_are_closed() -> None:
    async def broken() -> None:
        raise ValueError("bad record")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="bad record"):
            await Eager().wait_first(broken(), asyncio.Event().wait())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(scenario())
        gc.collect()
    assert not [warning for warning in caught if "never awaited" in str(warning.message)]



def shape(function: Callable) -> str:
    """`function`'s parameters after `self`: "a, b=, *, c=" (= where it has a default), "*args", "**kwargs"."""
    parts: list[str] = []
    starred = False
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name == "self":
            continue
        if parameter.kind is parameter.VAR_POSITIONAL:
            parts.append("*" + parameter.name)
            starred = True
        elif parameter.kind is parameter.VAR_KEYWORD:
            parts.append("**" + parameter.name)
        else:
            if parameter.kind is parameter.KEYWORD_ONLY and not starred:
                parts.append("*")
                starred = True
            parts.append(parameter.name + ("=" if parameter.default is not parameter.empty else ""))
    return ", ".join(parts)


def code(function: object) -> str:
    """The source of `function` (or module) without whitespace, to look for a call in it."""
    return re.sub(r"\s+", "", inspect.getsource(function))  # type: ignore[arg-type]


def current_event_follows_event_context() -> bool:
    class Event:  # anything faust can hold a weak reference to
        pass

    event = Event()
    with faust_adapter.event_context(event):  # type: ignore[arg-type]
        inside = faust.streams.current_event() is event
    return inside and faust.streams.current_event() is None


def web_prefixes(views: bool) -> set[str]:
    """The URL prefixes of the blueprints a TunedApp's web server mounts, with faust's table and router views or not."""
    app = faust_adapter.TunedApp(
        "faust-adapter-guard-web", broker="kafka://127.0.0.1:1", web_tables_enabled=views, web_router_enabled=views
    )
    return {prefix for prefix, _ in app.web.blueprints._enabled}


@functools.cache
def worker() -> dict[str, Any]:
    """What a TunedApp builds without a broker: its classes, its worker consumer, a topic iterator, its recovery."""

    async def build() -> dict[str, Any]:
        app = faust_adapter.TunedApp("faust-adapter-guard", broker="kafka://127.0.0.1:1", consumer_fetch_max_wait=0.02)
        thread = app.consumer._new_consumer_thread()
        consumer = thread._create_worker_consumer(app.transport)
        await consumer.stop()
        iterator = aiter(app.topic("guard"))
        return {
            "classes": (type(app.transport), type(app.consumer), type(thread), type(app.tables)),
            "fetch_max_wait_ms": consumer._fetch_max_wait_ms,
            "iterator": iterator, "iterator_of_iterator": aiter(iterator), "queue": iterator.queue,
            "recovery_completed": app.tables.recovery.completed,
            "flow_control_active": app.flow_control.is_active(),
            "web_prefixes": {views: web_prefixes(views) for views in (False, True)},
        }

    return asyncio.run(build())


A = faust_adapter
Consumer, Delegate = faust.transport.consumer.Consumer, faust.transport.consumer.ThreadDelegateConsumer
# (the patch that breaks, with what it relies on; whether that holds at the pinned versions): one line each
CHECKS: list[tuple[str, Callable[[], object]]] = [
    ("event_context (faust.streams._current_event, a ContextVar)",
     lambda: isinstance(faust.streams._current_event, contextvars.ContextVar)),
    ("event_context (faust.streams.current_event() reads what it set)", current_event_follows_event_context),
    ("event_context (the RocksDB store files a write under current_event()'s partition: Store._set)",
     lambda: "current_event()" in code(faust_rocksdb.Store._set)),
    ("KeyPartitionedTable (Collection.partition_for_key(key))",
     lambda: shape(faust.tables.base.Collection.partition_for_key) == "key"),
    ("KeyPartitionedTable (Table.on_key_set and on_key_del send to self.partition_for_key(key))",
     lambda: all("self.partition_for_key(key)" in code(f) for f in (Table.on_key_set, Table.on_key_del))),
    ("fetch wait patch (_ConsumerThread._create_worker_consumer(transport))",
     lambda: shape(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer) == "transport"),
    ("fetch wait patch (AIOKafkaConsumer.start builds its Fetcher from self._fetch_max_wait_ms)",
     lambda: "fetch_max_wait_ms=self._fetch_max_wait_ms" in code(aiokafka.AIOKafkaConsumer.start)),
    ("fetch wait patch (a TunedApp's worker consumer gets consumer_fetch_max_wait)",
     lambda: worker()["fetch_max_wait_ms"] == 20),
    ("fetch wait patch (_Consumer._new_consumer_thread(); AIOKafkaConsumerThread(consumer, loop=, beacon=))",
     lambda: shape(faust_aiokafka.Consumer._new_consumer_thread) == ""
     and "AIOKafkaConsumerThread(self,loop=self.loop,beacon=self.beacon)" in code(faust_aiokafka.Consumer)),
    ("TunedApp (faust.App._new_transport(); Transport(url, app))",
     lambda: shape(faust.App._new_transport) == "" and shape(faust.transport.base.Transport).startswith("url, app")),
    ("TunedApp (Transport.Consumer, the consumer class)",
     lambda: faust_aiokafka.Transport.Consumer is faust_aiokafka.Consumer),
    ("TunedApp (its transport, consumer, consumer thread and table manager are the adapter's)",
     lambda: worker()["classes"] == (A._Transport, A._Consumer, A._ConsumerThread, A._TableManager)),
    ("fetch stamp (_Consumer._to_message(tp, record))",
     lambda: shape(faust_aiokafka.Consumer._to_message) == "tp, record"),
    ("faust-streaming#596 (Consumer.perform_seek() awaits self.seek_to_committed())",
     lambda: shape(Consumer.perform_seek) == "" and "awaitself.seek_to_committed()" in code(Consumer.perform_seek)),
    ("faust-streaming#596 (ThreadDelegateConsumer.seek_to_committed(), a coroutine)",
     lambda: shape(Delegate.seek_to_committed) == "" and inspect.iscoroutinefunction(Delegate.seek_to_committed)),
    ("faust-streaming#596 (Consumer.stop_flow(), resume_flow(), flow_active)",
     lambda: shape(Consumer.stop_flow) == shape(Consumer.resume_flow) == ""
     and "self.flow_active=False" in code(Consumer.stop_flow)),
    ("faust-streaming#596 (Consumer._read_offset; the fetch loop drops what lies below it)",
     lambda: "_read_offset" in Consumer.__annotations__ and "DROPPEDMESSAGEROFF" in code(Consumer._drain_messages)),
    ("EagerWaitFirst (Service.wait_first(*coros, timeout=))", lambda: shape(Service.wait_first) == "*coros, timeout="),
    ("EagerWaitFirst (mode.services.WaitResults(done, results, stopped), WaitArgT)",
     lambda: mode.services.WaitResults._fields == ("done", "results", "stopped") and mode.services.WaitArgT),
    ("EagerWaitFirst (Service._stopped, Service._crashed)",
     lambda: {"_stopped", "_crashed"} <= set(mode.services.Service.__annotations__)),
    ("EagerWaitFirst (the fetch loop delivers each record through self.wait_first(callback(message), ...))",
     lambda: "self.wait_first(callback(message),self.suspend_flow.wait()" in code(Consumer._drain_messages)),
    ("ready_batches (aiter() of a topic's iterator is itself, delivering into its .queue)",
     lambda: worker()["iterator_of_iterator"] is worker()["iterator"] and hasattr(worker()["queue"], "get_nowait")),
    ("ready_batches (Consumer.unacked, Conductor.acking_topics)",
     lambda: isinstance(Consumer.unacked, property)
     and isinstance(faust.transport.conductor.Conductor.acking_topics, property)),
    ("ready_batches' end (Actor.cancel, on stop, throws StopAsyncIteration into its stream's channel)",
     lambda: "self.stream.channel)._throw(StopAsyncIteration())" in code(faust.agents.actor.Actor.cancel)),
    ("ready_batches' end (ThrowableQueue.get and get_nowait raise what was thrown; empty() is False meanwhile)",
     lambda: all("raiseself._errors.popleft()" in code(f) for f in (ThrowableQueue.get, ThrowableQueue.get_nowait))
     and "andnotself._errors" in code(ThrowableQueue.empty)),
    ("ready_batches (Message.tracked, generation_id, time_in)",
     lambda: {"tracked", "generation_id", "time_in"} <= set(faust.types.tuples.Message.__slots__)),
    ("ready_batches (App.consumer_generation_id, App.flow_control.is_active())",
     lambda: isinstance(faust.App.consumer_generation_id, int) and worker()["flow_control_active"] in (True, False)),
    ("ready_batches (sensors.on_message_in and on_message_out(tp, offset, message))",
     lambda: shape(SensorDelegate.on_message_in) == shape(SensorDelegate.on_message_out) == "tp, offset, message"),
    ("ready_batches (Event.ack() -> bool)",
     lambda: shape(faust.events.Event.ack) == "" and inspect.signature(faust.events.Event.ack).return_annotation
     in (bool, "bool")),
    ("committed_offsets (TableManager.on_commit(offsets), called only after an accepted commit)",
     lambda: shape(faust.tables.TableManager.on_commit) == "offsets"
     and re.search(r"ifdid_commit:[^:]*self\.app\.tables\.on_commit\(", code(Consumer._commit_offsets))),
    ("send_record (Producer.send(topic, key, value, partition, timestamp, headers, *, transactional_id=))",
     lambda: shape(faust_aiokafka.Producer.send)
     == "topic, key, value, partition, timestamp, headers, *, transactional_id="),
    ("web_faust_views (faust's web_tables_enabled and web_router_enabled settings gate /table and /router)",
     lambda: {"/table", "/router"} & worker()["web_prefixes"][False] == set()
     and {"/table", "/router"} <= worker()["web_prefixes"][True]),
    ("_Consumer.highwaters (changelog recovery reads up to app.consumer.highwaters(*tps), less 1)",
     lambda: "consumer=self.app.consumer" in code(faust.tables.recovery.Recovery._restart_recovery.fun)
     and "T(self._build_highwaters)(consumer," in code(faust.tables.recovery.Recovery._restart_recovery.fun)
     and "awaitconsumer.highwaters(*tps)" in code(faust.tables.recovery.Recovery._build_highwaters)),
    ("_Consumer.highwaters (ThreadDelegateConsumer.highwaters(*partitions), a coroutine)",
     lambda: shape(Delegate.highwaters) == "*partitions" and inspect.iscoroutinefunction(Delegate.highwaters)),
    ("recovered_once (TableManager.recovery.completed, an Event that faust sets and never clears)",
     lambda: isinstance(faust.tables.TableManager.recovery, property)
     and hasattr(worker()["recovery_completed"], "is_set") and "completed.clear()" not in code(faust.tables.recovery)),
]


@pytest.mark.parametrize(("patch", "holds"), CHECKS, ids=[patch for patch, _ in CHECKS])
def test_what_the_adapter_relies_on_is_there(patch: str, holds: Callable[[], object]) -> None:
    try:
        held, why = bool(holds()), "not as expected"
    except Exception as error:  # a name that is gone fails as the patch that needs it, not as an AttributeError
        held, why = False, repr(error)
    versions = ", ".join(f"{name} {version(name)}" for name in ("faust-streaming", "aiokafka", "mode-streaming"))
    assert held, f"faust_adapter: {patch}: {why} ({versions})"


def test_ready_batches_ends_when_faust_stops_the_agent() -> None:
    """faust stops an agent by throwing StopAsyncIteration into its channel (`Actor.cancel`): the batches end, with
    no RuntimeError (an async generator may not let StopAsyncIteration out), whether it was waiting or not."""

    async def batches_until_stopped(waiting: bool) -> list[list[Any]]:
        app = faust_adapter.TunedApp("faust-adapter-stop", broker="kafka://127.0.0.1:1")
        stream = app.stream(aiter(app.topic("stop")))
        if not waiting:  # thrown before the generator asks: its first get() raises it at once
            stream.channel._throw(StopAsyncIteration())
        else:
            asyncio.get_running_loop().call_soon(stream.channel._throw, StopAsyncIteration())
        return [batch async for batch in faust_adapter.ready_batches(stream, 8)]

    for waiting in (True, False):
        assert run(batches_until_stopped(waiting)) == []


def test_the_ends_faust_lists_go_through_the_apps_check() -> None:
    """What changelog recovery and the consumer lag read: faust's listed ends, as the app's `partition_ends` returns
    them (`stream_app.partition_ends`)."""

    class ListingThread:  # faust's consumer thread lists the ends (ListOffsets)
        async def highwaters(self, *partitions: faust.types.TP) -> dict[faust.types.TP, int]:
            return dict.fromkeys(partitions, 6)

    async def checked(listed: dict[faust.types.TP, int]) -> dict[faust.types.TP, int]:
        return {tp: end + 2 for tp, end in listed.items()}

    async def ends(partition_ends: Any) -> dict[faust.types.TP, int]:
        app = faust_adapter.TunedApp("faust-adapter-ends", broker="kafka://127.0.0.1:1", partition_ends=partition_ends)
        app.consumer._thread = ListingThread()
        return dict(await app.consumer.highwaters(faust.types.TP("changelog", 0)))

    assert run(ends(checked)) == {faust.types.TP("changelog", 0): 8}
    assert run(ends(None)) == {faust.types.TP("changelog", 0): 6}
