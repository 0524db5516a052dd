"""Stream benchmark: the embedded broker and one worker serving the demo's artifact, fed real test clicks.

    python bench/stream_throughput.py [--clicks 20000] [--rate 200] [--rate-seconds 15]

Prints the machine and settings, then (a) seconds from starting the worker to the first suggestion
(a click waits in the topic meanwhile), (b) sustained clicks/s served while the producer pushes
`--clicks` test-day clicks as fast as it can (the day's sessions in time order, again with new
session ids once they run out), (c) click→suggestion latency at a fixed `--rate` (send time to the
suggestion being read back by a consumer) and (d) the worker's batch sizes, from its /metrics.
The worker uses NEXTCLICK_* settings from the environment plus the embedded broker's tuning.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import onnxruntime
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devtools.click_replay import (
    LoggedClick,
    OnlineStats,
    WorkerProcess,
    held_out_clicks,
    kafka_producer,
    percentiles,
    rate_schedule,
    receive_suggestions,
    send_clicks,
    suggestion_consumer,
)
from devtools.demo import QUICK_EPOCHS, demo_artifact
from devtools.embedded_broker import TANSU_WORKER_TUNING, EmbeddedBroker, free_port
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.scoring import Scorer
from stream_app.settings import Settings, get_settings


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clicks", type=int, default=20_000, help="clicks pushed as fast as possible")
    parser.add_argument("--rate", type=float, default=200.0, help="clicks/s of the latency run")
    parser.add_argument("--rate-seconds", type=float, default=15.0, help="length of the latency run")
    return parser.parse_args()


def endless_sessions(day: list[LoggedClick]) -> Iterator[LoggedClick]:
    """The test day's clicks in time order, over and over, each pass with its own session ids."""
    for replay in itertools.count():
        for click in day:
            yield dataclasses.replace(click, session_id=f"{click.session_id}~{replay}")


def take(clicks: Iterator[LoggedClick], count: int) -> list[LoggedClick]:
    return [next(clicks) for _ in range(count)]


async def create_topics(settings: Settings) -> None:
    """The worker's input and output topics, made up front so a click can wait for the worker."""
    admin = AIOKafkaAdminClient(**aiokafka_client_kwargs(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topic, settings.partitions, settings.topic_replication_factor)
                for topic in (settings.clicks_topic, settings.recommendations_topic)
            ]
        )
    finally:
        await admin.close()


def batch_counts(worker: WorkerProcess) -> dict[str, float]:
    """Cumulative counts of the batch-size histogram, by upper bound (`le`)."""
    return {labels["le"]: value for labels, value in worker.metric_samples("nextclick_batch_size_bucket")}


def batch_distribution(before: dict[str, float], after: dict[str, float]) -> str:
    """Batches per size bucket between two snapshots, e.g. `1: 12, 2-4: 3`, and the mean size."""
    parts, lower, below = [], 1, 0.0
    for bound, cumulative in after.items():
        total = cumulative - before.get(bound, 0.0)
        count, below = total - below, total
        upper = "inf" if bound == "+Inf" else str(int(float(bound)))
        if count:
            parts.append(f"{upper if str(lower) == upper else f'{lower}-{upper}'}: {count:.0f}")
        lower = int(float(bound)) + 1 if bound != "+Inf" else lower
    return ", ".join(parts) or "none"


async def wait_answered(
    stats: OnlineStats, count: int, worker: WorkerProcess, timeout: float = 300.0
) -> float:
    """Block until `count` distinct clicks have their suggestion; return when (monotonic)."""
    deadline = time.monotonic() + timeout
    while stats.answered < count:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {stats.answered} of {count} clicks answered after {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic()


async def measure(args: argparse.Namespace, worker: WorkerProcess, day: list[LoggedClick]) -> None:
    settings = worker.settings
    await create_topics(settings)
    stats = OnlineStats()
    clicks = endless_sessions(day)
    producer, consumer = kafka_producer(settings, linger_ms=5), suggestion_consumer(settings)
    await producer.start()
    await consumer.start()
    receiving = asyncio.create_task(receive_suggestions(consumer, stats))
    try:
        started = time.monotonic()
        worker.start()
        await send_clicks(producer, settings.clicks_topic, take(clicks, 1), None, stats.clicked)
        first = await wait_answered(stats, 1, worker, timeout=120)
        print(f"(a) worker start -> first suggestion: {first - started:.2f} s")

        before = batch_counts(worker)
        pushed = take(clicks, args.clicks)
        pushing = time.monotonic()
        await send_clicks(producer, settings.clicks_topic, pushed, None, stats.clicked)
        sent = time.monotonic()
        served = await wait_answered(stats, 1 + args.clicks, worker)
        print(
            f"(b) {args.clicks} clicks pushed at {args.clicks / (sent - pushing):.0f} clicks/s;"
            f" served at {args.clicks / (served - pushing):.0f} clicks/s"
            f" (last suggestion {served - pushing:.1f} s after the first click)"
        )
        print(f"    batch sizes: {batch_distribution(before, batch_counts(worker))}")

        before = batch_counts(worker)
        count = int(args.rate * args.rate_seconds)
        measured_from = len(stats.latencies)
        paced = take(clicks, count)
        await send_clicks(
            producer, settings.clicks_topic, paced, rate_schedule(count, args.rate), stats.clicked
        )
        await wait_answered(stats, 1 + args.clicks + count, worker)
        p50, p95, p99 = (1000 * p for p in percentiles(stats.latencies[measured_from:], 50, 95, 99))
        print(
            f"(c) {count} clicks at {args.rate:.0f} clicks/s: click->suggestion latency"
            f" p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms"
        )
        print(f"    batch sizes: {batch_distribution(before, batch_counts(worker))}")
        print(f"(d) batch sizes over the whole run: {batch_distribution({}, batch_counts(worker))}")
        print(
            f"    online hit-rate@{settings.top_k} over all clicks: {stats.hit_rate:.3f} ({stats.judged} judged)"
        )
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        await producer.stop()
        await consumer.stop()


def main() -> None:
    args = parse_args()
    settings = get_settings()
    artifact = demo_artifact(settings, QUICK_EPOCHS)
    scorer = Scorer(artifact)
    day = held_out_clicks(settings)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        fields = {
            **TANSU_WORKER_TUNING,
            "bootstrap_servers": broker.bootstrap_servers,
            "serving_artifact_dir": artifact,
            "web_port": free_port(),
        }
        worker = WorkerProcess(fields, Path(tmp) / "worker.log")
        s = worker.settings
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f},"
            f" Python {platform.python_version()}, onnxruntime {onnxruntime.__version__} ({scorer.provider})"
        )
        print(
            f"model: {scorer.name} artifact {scorer.version} ({artifact}), hidden {scorer.hidden_size},"
            f" {len(scorer.item_ids)} items, top_k {s.top_k}"
        )
        print(
            f"worker: 1 process, {s.partitions} partitions, batch_size {s.batch_size}, batch_window"
            f" {s.batch_window} s, consumer_fetch_max_wait {s.consumer_fetch_max_wait} s, inference_threads"
            f" {s.inference_threads}, table {s.table_store}; broker: embedded Tansu (memory)"
        )
        try:
            asyncio.run(measure(args, worker, day))
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
