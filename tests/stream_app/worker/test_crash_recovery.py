"""A worker killed with SIGKILL mid-stream loses no click, and its successor serves correct sessions.

Real test-day clicks are sent at a steady rate while the first worker serves them; it is killed
once part of them is answered (so some processed clicks are not yet committed) and a second worker
with the same settings takes over from the committed offsets and the table's changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.click_replay import held_out_clicks
from devtools.embedded_broker import EmbeddedBroker
from stream_app.settings import get_settings
from tests.stream_app.worker.membership import Step, Workers, assert_answered_as_one_worker, serve_through

pytestmark = pytest.mark.broker

CLICKS = 600
RATE = 100.0  # clicks/s: the stream lasts 6 s, the crash lands in it


def test_a_killed_worker_loses_no_click_and_its_successor_matches_the_offline_model(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    offline_items: Callable[[list[str]], list[str]],
    tmp_path: Path,
) -> None:
    clicks = held_out_clicks(get_settings(), CLICKS)
    fields = worker_fields(broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact)

    def launch(name: str) -> contextlib.AbstractContextManager[Any]:
        return launch_worker(fields, tmp_path / f"{name}.log", require_model=True)

    with contextlib.ExitStack() as stack:
        workers = Workers(launch, stack)
        served = asyncio.run(serve_through(clicks, RATE, workers, "first", [
            Step("first killed", CLICKS // 4, lambda: workers.kill("first")),
            Step("second takes over", 0, lambda: workers.join("second")),
        ]))
    assert "first killed" in served.under_load, "the crash came too late to be mid-stream"
    assert_answered_as_one_worker(served, offline_items)
