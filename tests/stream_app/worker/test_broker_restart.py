"""A broker with durable storage killed (SIGKILL) and restarted under a steady stream of real clicks: the worker
goes on by itself and every click is answered (at least once), none lost.

The embedded broker here keeps its data in a local S3 server (`devtools.s3_store`), so the restart keeps the
topics, records and committed offsets; a memory broker's restart is `test_broker_readiness.py`'s case.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.click_replay import held_out_clicks
from devtools.embedded_broker import DURABLE_WORKER_TUNING, EmbeddedBroker
from devtools.fault_load import Fault, click_messages, run_load
from devtools.s3_store import S3Store
from stream_app.settings import get_settings

pytestmark = [pytest.mark.broker, pytest.mark.durable]

CLICKS = 600
RATE = 40.0  # clicks/s: the stream lasts 15 s
RESTART_AT = 5.0  # seconds into the stream
DOWN = 5.0  # seconds without a broker: longer than the worker's group session timeout


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with S3Store(tmp_path / "s3", log_file=tmp_path / "s3.log") as storage, \
            EmbeddedBroker(storage=storage, log_file=tmp_path / "broker.log") as broker:
        yield broker


def test_a_durable_broker_killed_and_restarted_under_load_loses_no_click(
    artifact: Path, durable_broker: EmbeddedBroker, tmp_path: Path, launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
) -> None:
    fields = worker_fields(durable_broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact,
                           **DURABLE_WORKER_TUNING)
    messages = click_messages(held_out_clicks(get_settings(), CLICKS))
    with launch_worker(fields, tmp_path / "worker.log", require_model=True) as worker:
        account = asyncio.run(run_load(worker.settings, messages, RATE, [
            Fault("broker restart", RESTART_AT, lambda: durable_broker.restart(down=DOWN)),
        ]))
        alive = worker.process.poll() is None
    recovery = account.recovery("broker restart")
    assert recovery is not None, "no suggestion after the restart"
    print(f"{len(account.sent)} clicks acknowledged, {account.answered} answered, {account.duplicated} twice;"
          f" first new suggestion {recovery:.2f} s after the broker was back")
    assert alive, worker.log_tail()
    assert account.failed == 0 and len(account.sent) == CLICKS
    assert not account.lost(), f"{len(account.lost())} clicks unanswered: {account.lost()[:5]}"
    assert account.dead_lettered == 0
