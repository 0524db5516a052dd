"""Replay real clicks through a broker and a worker, and watch the suggestions come back.

Shared by the live demo (`devtools.demo`) and the stream benchmark (`bench/stream_throughput.py`):
starting a worker as a child process, reading the data set's test clicks in time order, sending
them on a schedule, and scoring the suggestions online (hit rate, click→suggestion latency).
Each click sent is stamped with the send time as its `timestamp` (the logged time travels along as
`logged_time`), so the latency is the pipeline's, not the data set's age.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gc
import gzip
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from devtools.embedded_broker import TANSU_WORKER_TUNING, free_port
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.settings import REPO_ROOT, Settings

TEST_CLICKS = Path("yoochoose_rsc15_100k") / "yoochoose-clicks-100k_test.txt.gz"


@dataclass(frozen=True, slots=True)
class LoggedClick:
    session_id: str
    item_id: str
    time: float  # Unix seconds, as logged


def logged_clicks(path: Path, limit: int | None = None) -> list[LoggedClick]:
    """The clicks of a session-rec TSV log (SessionId, ItemId, Time), in time order."""
    with gzip.open(path, "rt") as lines:
        clicks = [
            LoggedClick(row["SessionId"], row["ItemId"], float(row["Time"]))
            for row in csv.DictReader(lines, delimiter="\t")
        ]
    clicks.sort(key=lambda click: click.time)  # stable: a session's equal times keep their order
    return clicks[:limit]


def held_out_clicks(settings: Settings, limit: int | None = None) -> list[LoggedClick]:
    """The real test day of `yoochoose_rsc15_100k`, in time order."""
    return logged_clicks(settings.data_dir / TEST_CLICKS, limit)


def speedup_schedule(clicks: Sequence[LoggedClick], speedup: float) -> list[float]:
    """Send offsets (s from the start) that keep the logged gaps, divided by `speedup`."""
    return [(click.time - clicks[0].time) / speedup for click in clicks] if clicks else []


def rate_schedule(count: int, rate: float) -> list[float]:
    """Send offsets for `count` clicks at a fixed `rate` per second."""
    return [index / rate for index in range(count)]


class WorkerProcess:
    """`python -m stream_app worker` as a child process: `fields` (Settings names) override NEXTCLICK_*.

    It gets its own process group, so a Ctrl-C meant for the parent does not reach it: the parent
    decides when and how it stops.
    """

    def __init__(self, fields: dict[str, Any], log_file: Path, base_env: Mapping[str, str] | None = None) -> None:
        self.settings = Settings(**fields)
        self.fields = fields
        self.log_file = log_file
        self.base_env = os.environ if base_env is None else base_env  # tests pass one without NEXTCLICK_*
        self.process: subprocess.Popen[bytes] | None = None
        self.web_url = f"http://127.0.0.1:{self.settings.web_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.web_url}/metrics"

    def start(self) -> WorkerProcess:
        env = dict(self.base_env) | {
            f"NEXTCLICK_{name.upper()}": str(value) for name, value in self.fields.items() if value is not None
        }
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream_app", "worker", "-l", "info"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def readiness(self) -> dict[str, bool]:
        """The /readyz checks; empty while the web server does not answer yet."""
        try:
            with urllib.request.urlopen(f"{self.web_url}/readyz", timeout=2) as response:
                return json.loads(response.read())["checks"]
        except urllib.error.HTTPError as error:
            return json.loads(error.read())["checks"]
        except OSError:
            return {}

    def wait_ready(self, timeout: float = 60.0, checks: Collection[str] | None = None) -> None:
        """Block until the named /readyz `checks` pass (default: all of them, the model loaded included)."""
        deadline = time.monotonic() + timeout
        while not (state := self.readiness()) or not all(state[c] for c in (checks or state)):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {timeout} s ({state}); see {self.log_file}")
            time.sleep(0.1)

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}; see {self.log_file}")

    def metric_samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every sample called `name` on /metrics."""
        return self.metric_snapshot(name)[name]

    def metric_snapshot(self, *names: str) -> dict[str, list[tuple[dict[str, str], float]]]:
        """(labels, value) of every sample of each of `names`, from one read of /metrics."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        snapshot: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in names}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in snapshot:
                    snapshot[sample.name].append((sample.labels, sample.value))
        return snapshot

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (faust's clean shutdown), then SIGKILL after `timeout`; idempotent."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def unique_worker_settings(bootstrap_servers: str, tmp_dir: Path, **overrides: Any) -> dict[str, Any]:
    """`WorkerProcess` fields for a worker with its own app id and topics (many share one broker), its folders
    in `tmp_dir` and the Tansu tuning; for the tests and the fault suite, which override what they need."""
    app_id = f"t{uuid.uuid4().hex[:10]}"
    return {
        "bootstrap_servers": bootstrap_servers,
        "app_id": app_id,
        "clicks_topic": f"{app_id}-clicks",
        "recommendations_topic": f"{app_id}-recommendations",
        "dead_letter_topic": f"{app_id}-dlq",
        "catalogue_topic": f"{app_id}-catalogue",
        "partitions": 2,
        "table_dir": tmp_dir / "state" / "tables",  # not there yet: the worker must create its parents
        "web_port": free_port(),
        "serving_artifact_dir": tmp_dir / "no-artifact",
        "model_retry_interval": 1.0,
        "exclude_seen": "true",  # what the tests' `offline_suggestion` serves; tests of `auto` override it
        **TANSU_WORKER_TUNING,
        **overrides,
    }


def click_message(click: LoggedClick, sent_at: float) -> tuple[bytes, bytes]:
    """Key and value of a click sent now: keyed by session id, `timestamp` = send time."""
    value = {
        "session_id": click.session_id,
        "item_id": click.item_id,
        "timestamp": sent_at,
        "logged_time": click.time,
    }
    return click.session_id.encode(), json.dumps(value).encode()


@dataclass
class OnlineStats:
    """What the suggestions coming back say, judged against the clicks sent.

    Hit rate: the share of judged suggestions whose items hold the session's actual next click;
    a suggestion is judged once both it and that next click are there (a session's last click
    never is). At-least-once delivery may repeat a suggestion: only the first one counts.
    """

    sent: int = 0
    received: int = 0  # suggestions, repeats included
    answered: int = 0  # distinct clicks with a suggestion
    hits: int = 0
    judged: int = 0
    latencies: list[float] = field(default_factory=list)  # receive time − click timestamp, s
    first_received: float | None = None  # time.monotonic() of the first suggestion
    _items: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    _ordinal: dict[tuple[str, float], int] = field(default_factory=dict)
    _answered: set[tuple[str, int]] = field(default_factory=set)
    _waiting: dict[tuple[str, int], list[str]] = field(default_factory=dict)

    def clicked(self, click: LoggedClick, sent_at: float) -> None:
        items = self._items[click.session_id]
        self._ordinal[(click.session_id, sent_at)] = len(items)
        items.append(click.item_id)
        self.sent += 1
        if (suggested := self._waiting.pop((click.session_id, len(items) - 2), None)) is not None:
            self._judge(suggested, click.item_id)

    def suggested(self, suggestion: dict[str, Any], received_at: float) -> None:
        self.received += 1
        if self.first_received is None:
            self.first_received = time.monotonic()
        session_id = suggestion["session_id"]
        ordinal = self._ordinal.get((session_id, suggestion["click"]["timestamp"]))
        if ordinal is None or (session_id, ordinal) in self._answered:
            return
        self._answered.add((session_id, ordinal))
        self.answered += 1
        self.latencies.append(received_at - suggestion["click"]["timestamp"])
        items = self._items[session_id]
        if ordinal + 1 < len(items):
            self._judge(suggestion["items"], items[ordinal + 1])
        else:
            self._waiting[(session_id, ordinal)] = suggestion["items"]

    def _judge(self, suggested: list[str], actual: str) -> None:
        self.judged += 1
        self.hits += actual in suggested

    @property
    def sessions(self) -> int:
        """Sessions with a click sent."""
        return len(self._items)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.judged if self.judged else float("nan")

    def latency_percentiles(self, *percents: float) -> list[float]:
        """Click→suggestion latency percentiles in seconds (NaN before any suggestion)."""
        return percentiles(self.latencies, *percents)


def percentiles(values: Sequence[float], *percents: float) -> list[float]:
    """`np.percentile`, but NaN for no values instead of an error."""
    return np.percentile(values, percents).tolist() if len(values) else [float("nan")] * len(percents)


def kafka_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """A producer that partitions by key like the worker expects (aiokafka's murmur2 default)."""
    return AIOKafkaProducer(acks="all", **aiokafka_client_kwargs(settings), **options)


def suggestion_consumer(settings: Settings) -> AIOKafkaConsumer:
    """Reads the recommendations topic from the start, polling as briefly as the worker does."""
    return AIOKafkaConsumer(
        settings.recommendations_topic,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=int(settings.consumer_fetch_max_wait * 1000),
        **aiokafka_client_kwargs(settings),
    )


async def send_clicks(
    producer: AIOKafkaProducer,
    topic: str,
    clicks: Iterable[LoggedClick],
    schedule: Iterable[float] | None,
    on_sent: Callable[[LoggedClick, float], None],
) -> list[float]:
    """Send `clicks` at their `schedule` offsets from now (None: as fast as the producer takes them).

    Returns once every click is acknowledged by the broker, with how late (s) each click left against its
    schedule: a sender that falls behind (a pause of its own) sends the clicks it owes in a burst. A schedule is
    kept with the garbage collector paused (`collector_paused`).
    """
    pending, lateness = [], []
    offsets = schedule if schedule is not None else itertools.repeat(0.0)
    with collector_paused() if schedule is not None else contextlib.nullcontext():
        started = time.monotonic()
        for click, offset in zip(clicks, offsets):
            if (delay := started + offset - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            lateness.append(time.monotonic() - started - offset)
            sent_at = time.time()
            key, value = click_message(click, sent_at)
            pending.append(await producer.send(topic, value, key=key))
            on_sent(click, sent_at)
    await asyncio.gather(*pending)
    return lateness


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection in this process while the block runs, for a sender that keeps a schedule.

    A full collection over a process holding a click log stops it for tens of ms, and a scheduled sender then
    owes the clicks of that pause and sends them in one burst: a load the worker was not asked to carry. What
    the process held before the block is frozen out of collections; the block's own garbage waits for the end.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def receive_suggestions(consumer: AIOKafkaConsumer, stats: OnlineStats) -> None:
    """Feed every suggestion to `stats` until cancelled."""
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        received_at = time.time()
        for records in batches.values():
            for record in records:
                stats.suggested(json.loads(record.value), received_at)
