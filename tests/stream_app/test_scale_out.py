"""Workers share the partitions: joining, crashing and leaving move sessions, never lose or change them.

Real test-day clicks are sent at a steady rate over four partitions while: one worker serves them;
a second joins (half the partitions move to it, their sessions recovered from the table's
changelog); the first is SIGKILLed (the second takes everything over, from the committed offsets);
a third joins; the second leaves cleanly (SIGTERM). Every click is answered, and each session's
suggestions are those the offline model gives for its clicks so far, as with one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.click_replay import click_message, held_out_clicks
from devtools.embedded_broker import EmbeddedBroker, free_port
from stream_app.partitioning import partition_for_key
from stream_app.settings import get_settings
from tests.stream_app.membership import (
    Launch,
    Step,
    Workers,
    assert_answered_as_one_worker,
    serve_through,
)

pytestmark = pytest.mark.broker

CLICKS = 1_200
RATE = 40.0  # clicks/s: the stream lasts 30 s, long enough for three workers to start in it
PARTITIONS = 4


def side_by_side(launch_worker: Callable[..., Any], fields: dict[str, Any], tmp_path: Path) -> Launch:
    """`launch(name)`: a worker of the same group with its own web port, table folder and log."""

    def launch(name: str) -> contextlib.AbstractContextManager[Any]:
        own = fields | {"web_port": free_port(), "table_dir": tmp_path / name / "tables"}
        return launch_worker(own, tmp_path / f"{name}.log", require_model=True)

    return launch


def test_workers_joining_crashing_and_leaving_answer_every_click_as_one_worker_would(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    offline_items: Callable[[list[str]], list[str]],
    tmp_path: Path,
) -> None:
    clicks = held_out_clicks(get_settings(), CLICKS)
    fields = worker_fields(broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact, partitions=PARTITIONS)

    launch = side_by_side(launch_worker, fields, tmp_path)
    with contextlib.ExitStack() as stack:
        workers = Workers(launch, stack)
        served = asyncio.run(serve_through(clicks, RATE, workers, "first", [
            Step("second joins", CLICKS // 8, lambda: workers.join("second")),
            Step("first killed", CLICKS // 3, lambda: workers.kill("first")),
            Step("third joins", CLICKS // 2, lambda: workers.join("third")),
            Step("second leaves", 2 * CLICKS // 3, lambda: workers.leave("second")),
        ]))
    # the membership changes that must land mid-stream (the later ones may come as it ends on a slow machine)
    assert {"second joins", "first killed"} <= set(served.under_load), served.under_load
    assert_answered_as_one_worker(served, offline_items)


def test_a_worker_lets_go_of_the_sessions_of_partitions_that_moved_away(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    """faust's in-memory store keeps what the worker wrote itself after the partition moved: the sweep lets those
    sessions go (their new owner recovered them from the changelog), so a worker's memory follows its share."""
    clicks = held_out_clicks(get_settings(), 200)
    sessions = {click.session_id for click in clicks}
    fields = worker_fields(broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact, partitions=PARTITIONS,
                           table_standby_replicas=0, eviction_interval=0.5)

    launch = side_by_side(launch_worker, fields, tmp_path)
    def table(worker: Any) -> tuple[float, float]:
        return worker.metric("nextclick_active_sessions"), worker.metric("nextclick_table_sessions")

    with launch("first") as first:
        first.produce(first.settings.clicks_topic, [click_message(click, time.time()) for click in clicks])
        first.wait_until(lambda: table(first) == (len(sessions), len(sessions)), what="every session in the table")
        # Tansu answers ListOffsets with a partition's last batch's base offset + 1 (../shared/notes/tansu-broker.md),
        # and recovery reads the changelog that far: one more click per partition makes each last batch one record
        closing = {partition_for_key(c.session_id.encode(), PARTITIONS): c for c in clicks}
        first.produce(first.settings.clicks_topic, [click_message(click, time.time()) for click in closing.values()])
        answered = len(clicks) + len(closing)
        first.wait_until(lambda: first.metric("nextclick_suggestions_published_total") == answered, what="answers")
        with launch("second") as second:
            second.wait_until(lambda: 0 < table(second)[0] < len(sessions), timeout=60, what="its share recovered")
            first.wait_until(lambda: table(first)[0] + table(second)[0] == len(sessions), timeout=60,
                             what="the first's share")
            first.wait_until(lambda: table(first)[1] == table(first)[0], what="the moved sessions let go")
