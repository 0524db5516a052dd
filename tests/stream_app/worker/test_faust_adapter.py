"""`EagerWaitFirst` keeps mode's `wait_first` race, minus the tasks for a delivery that does not wait.

The worker's consumer hands every record to the streams through it (`stream_app.worker.faust_adapter`, item 5);
the crash and scale-out tests cover it end to end, these its contract."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
from mode import Service

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
