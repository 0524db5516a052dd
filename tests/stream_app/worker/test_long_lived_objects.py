"""A worker's first served version freezes what it has built out of the collector's full passes, and a version
swapped out afterwards is still freed (`stream_app.worker.model_swap.freeze_long_lived_objects`)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_app.inference.catalogue import Catalogue
from stream_app.settings import Settings
from stream_app.worker.metrics import WorkerMetrics
from stream_app.worker.model_swap import ServedModel


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Give the test process's objects back to the collector afterwards."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def in_collected_generations(target: object) -> bool:
    return any(tracked is target for tracked in gc.get_objects())


def test_the_first_version_freezes_the_objects_built_so_far(artifact: Path, unfrozen: None) -> None:
    served = ServedModel(Settings(), WorkerMetrics(), asyncio.Event(), catalogue=Catalogue())
    before = gc.get_freeze_count()
    assert asyncio.run(served._swap(lambda: artifact, "first")) is True
    assert gc.get_freeze_count() > before
    assert not in_collected_generations(served.recommender)  # the served version is frozen with the rest
    assert not in_collected_generations(served)


def test_a_version_swapped_out_after_the_freeze_is_freed(artifact: Path, unfrozen: None) -> None:
    served = ServedModel(Settings(), WorkerMetrics(), asyncio.Event(), catalogue=Catalogue())

    async def two_swaps() -> tuple[weakref.ref, weakref.ref]:
        assert await served._swap(lambda: artifact, "first") is True
        first = weakref.ref(served.recommender), weakref.ref(served.recommender.scorer)
        assert await served._swap(lambda: artifact, "second") is True
        return first

    gc.disable()  # freed by reference counts alone, as frozen objects are: no collector pass may help
    try:
        recommender, scorer = asyncio.run(two_swaps())
        assert recommender() is None and scorer() is None
    finally:
        gc.enable()
