"""Training lanes: the retrain's independent trainings side by side, each in a process of its own.

A training's torch threads speed it up by less than their number, so on a small CPU two 1-thread processes
do more work than one 2-thread process (docs/training.md, Training lanes; figures: docs/experiments.md). The
retrain's trainings are mostly independent (DIEN's fold retriever, the serving retrievers; DIEN once its
fold retriever is done), so `lanes` worker processes, each with threads // lanes torch threads, take them in
the order they are submitted; one lane runs every job here, in submission order. `Lanes` is what the
retrain holds: jobs in, results out, each job's stages added to the run's clock once.

A model trained in a 1-thread lane is not bit-equal to one trained on 2 threads (other summation orders),
but it is the same as a 1-thread retrain's: the arithmetic depends on the threads per job, not on the lanes.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from types import TracebackType
from typing import Any, Self

import torch

from training import progress


class InlineExecutor(Executor):
    """One lane: each job runs in this process as it is submitted."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(error)
        return future


def _start_lane(threads: int) -> None:
    torch.set_num_threads(threads)


def lane_executor(lanes: int, threads: int) -> Executor:
    """`lanes` (>= 1) worker processes of max(1, threads // lanes) torch threads each; in-process for one lane."""
    if lanes == 1:
        return InlineExecutor()
    # spawn: a forked child would inherit the parent's OpenMP thread pool in an undefined state
    return ProcessPoolExecutor(lanes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_lane,
                               initargs=(max(1, threads // lanes),))


def staged(label: str, job: Callable, *args: Any, **kwargs: Any) -> tuple[Any, list[dict]]:
    """A lane's job: job(clock, *args, **kwargs)'s result and the stages it timed on `clock`, for the run's
    clock. Its epoch and stage lines start with `label`: lanes interleave their output."""
    progress.LINE_LABEL = label
    clock = progress.StageClock()
    try:
        return job(clock, *args, **kwargs), clock.stages
    finally:
        progress.LINE_LABEL = ""


class Lanes:
    """A run's lanes: `submit` a job (`job(clock, *args)`), take its `result`; the stages the job timed go on
    the run's `clock` when its result is first taken. With one lane a job runs as it is submitted and its
    stages go on the clock right away, in the order they ran."""

    def __init__(self, lanes: int, threads: int, clock: progress.StageClock):
        self.lanes = lanes
        self.clock = clock
        self._executor = lane_executor(lanes, threads)
        self._results: dict[Future, Any] = {}

    def submit(self, label: str, job: Callable, *args: Any) -> Future:
        """Run `job(clock, *args)` on the next free lane; its lines start with `label: ` when lanes interleave."""
        future = self._executor.submit(staged, f"{label}: " if self.lanes > 1 else "", job, *args)
        if future.done():  # one lane: done as submitted, its stages go on the clock in the order they ran
            self.result(future)
        return future

    def result(self, future: Future) -> Any:
        """A job's result (waiting for it), its stages added to the run's clock (once)."""
        if future not in self._results:
            self._results[future], stages = future.result()
            self.clock.stages.extend(stages)
        return self._results[future]

    def __enter__(self) -> Self:
        self._executor.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._executor.__exit__(exc_type, exc, traceback)
