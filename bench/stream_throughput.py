"""Stream benchmark: what one worker serves against what its hardware allows, in one run.

    PYTHONPATH=. python bench/stream_throughput.py [--artifact DIR] [--clicks 20000] [--repeat 2]
        [--rate 1000] [--rate-seconds 15] [--memory-sessions 200000] [--rebalance-every 10] [--embedded-tuning]

The clicks come from the artifact's own data set (metrics.json's `dataset`: the test sessions of
Diginetica for a Diginetica model; the demo's YOOCHOOSE test day for the demo's artifact, the
default), `--sessions` of them interleaved click by click, each with its own id; a session that
ends is followed by the next test session. The broker is the embedded Tansu, with the
worker's NEXTCLICK_* settings (NEXTCLICK_SERVING_MODEL chooses the pipeline) plus the embedded broker's
tuning; (b)-(d) take only its group timings, the default tuning (`DEFAULT_TUNING`), with the fetch wait of
`--fetch-max-wait`. Prints:

(a) onnxruntime alone: the pipeline's model calls' clicks/s at the worker's batch size and threads;
(b) per repetition, on fresh topics holding `--clicks` clicks before the server starts: a bare
    aiokafka loop (`bench/bare_loop.py`, the ceiling), then the worker; clicks/s from the first
    suggestion read back to the last, the server's CPU µs per click, and the worker's ratio to both
    (ratios within one repetition: the machine may be shared); with `--embedded-tuning` then a worker
    with the embedded broker's whole tuning, as the tests and the demo run it, and its ratio to the first;
(c) latency at a fixed `--rate`, in a fresh worker on fresh topics after `WARM_UP_CLICKS` served as a
    backlog (the embedded broker's cost per fetch grows with the length of the partition it reads, so on
    (b)'s topics the figure would follow `--clicks`: docs/stream_performance.md): the worker's own time per
    click (p50/p99 of nextclick_processing_latency_seconds, interpolated in its buckets) and click →
    suggestion read back (end to end, through the broker's fetch wait), and the worker's CPU per click at that
    rate (against (b)'s backlog: what each batch's fixed cost adds when clicks come a few at a time); with
    `--embedded-tuning` also for a worker with that tuning;
(d) memory per active session, in (c)'s worker: its RSS growth from `--memory-sessions`/2 to `--memory-sessions`
    new sessions of one click each, against the raw state (hidden float32s and 4 bytes per kept item id); and a table of
    as many records holding 50 kept clicks each (the most the worker keeps by default), in this process;
(e) the pause each rebalance causes: clicks at `--rebalance-rate` while a second worker joins, the first
    is SIGKILLed, a third joins and the second leaves (the worker's broker session timeout bounds the
    SIGKILL's pause: the embedded broker's tuning sets 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime
from aiokafka import AIOKafkaProducer
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
from devtools.machine import machine_line
from devtools.stopping import unwind_on_sigterm
from stream_app.inference.artifact_format import METRICS
from stream_app.inference.scoring import Scorer
from stream_app.inference.served_pipeline import served_scorer
from stream_app.inference.sessions import SessionState
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.settings import REPO_ROOT, Settings, get_settings

BARE_LOOP = Path(__file__).with_name("bare_loop.py")
KEPT_CLICKS = 50
WARM_UP_CLICKS = 2_000  # served before (c): the worker's pools and onnxruntime's arena grown, the topics still short
SENT_LATE = 0.005  # s behind its schedule: a click (c) counts as sent late, in a burst with those it waited for


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, help="default: the demo's artifact (trained when missing)")
    parser.add_argument("--clicks", type=int, default=20_000, help="clicks served per throughput run")
    parser.add_argument("--sessions", type=int, default=2_000, help="sessions interleaved")
    parser.add_argument("--repeat", type=int, default=2, help="bare loop + worker runs, alternating")
    parser.add_argument("--rate", type=float, default=1_000.0, help="clicks/s of the latency run")
    parser.add_argument("--client-linger-ms", type=int, default=5,
                        help="the latency run's click producer linger (5: librdkafka's and Kafka 4's clients' default)")
    parser.add_argument("--rate-seconds", type=float, default=15.0, help="length of the latency run")
    parser.add_argument("--memory-sessions", type=int, default=200_000, help="sessions of the memory run")
    parser.add_argument("--rebalance-rate", type=float, default=200.0, help="clicks/s of the rebalance run")
    parser.add_argument("--fetch-max-wait", type=float, default=KAFKA_LIKE_FETCH_WAIT,
                        help="seconds a fetch may wait for clicks in (b)-(d), worker and bare loop alike. The embedded"
                        " broker answers a waiting fetch after up to half of it, so clicks sent at a steady rate"
                        " arrive in bursts of that length and the last click of a burst waits for the whole burst's"
                        " scoring; a real Kafka answers as soon as data is there. The default comes close to that;"
                        " the embedded broker's tuning for tests and the demo (0.03 s) polls less when idle")
    parser.add_argument("--rebalance-every", type=float, default=10.0,
                        help="seconds between membership changes in the rebalance run (0: no such run)")
    parser.add_argument("--embedded-tuning", action="store_true",
                        help="in (b) and (c), also run a worker with the embedded broker's whole tuning"
                        " (TANSU_WORKER_TUNING, as the tests and the demo run it: --fetch-max-wait does not apply)"
                        " and print its clicks/s over the default tuning's")
    return parser.parse_args()


# --- clicks ------------------------------------------------------------------------------------


def demo_day_sessions(settings: Settings) -> list[list[str]]:
    """The demo's real test day as sessions of item ids, in the order they start."""
    sessions: dict[str, list[str]] = {}
    for click in held_out_clicks(settings):
        sessions.setdefault(click.session_id, []).append(click.item_id)
    return list(sessions.values())


def test_sessions(artifact: Path, settings: Settings) -> tuple[str, list[list[str]]]:
    """The test sessions (external item ids) of the data set the artifact was trained on."""
    metrics = artifact / METRICS
    dataset = json.loads(metrics.read_text()).get("dataset") if metrics.is_file() else None
    if dataset in (None, "yoochoose_rsc15_100k"):
        return "yoochoose_rsc15_100k (the demo's test day)", demo_day_sessions(settings)
    # the trainer's readers, only for a data set other than the demo's
    from training.data.datasets import load_dataset

    return dataset, load_dataset(dataset)[1].sessions_as_ids()


def interleaved(sessions: list[list[str]], width: int) -> Iterator[LoggedClick]:
    """`width` sessions at a time, one click each in turn; an ended session makes way for the next
    test session (over and over, each pass with new ids)."""
    queue = ((f"{number}~{rerun}", items) for rerun in itertools.count() for number, items in enumerate(sessions))
    live = [(sid, iter(items)) for sid, items in itertools.islice(queue, width)]
    while True:
        for slot, (session_id, items) in enumerate(live):
            item = next(items, None)
            while item is None:
                session_id, fresh = next(queue)
                items = iter(fresh)
                live[slot] = (session_id, items)
                item = next(items, None)
            yield LoggedClick(session_id, item, 0.0)


def take(clicks: Iterator[LoggedClick], count: int, tag: str = "") -> list[LoggedClick]:
    """The next `count` clicks, their session ids suffixed with `tag` (a run of their own)."""
    return [dataclasses.replace(c, session_id=c.session_id + tag) for c in itertools.islice(clicks, count)]


# --- processes -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def create_topics(settings: Settings, *topics: str) -> None:
    admin = AIOKafkaAdminClient(**aiokafka_client_kwargs(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, settings.partitions, settings.topic_replication_factor) for topic in topics]
        )
    finally:
        await admin.close()


async def wait_answered(stats: OnlineStats, count: int, alive, timeout: float = 600.0) -> float:
    """Block until `count` distinct clicks have their suggestion; return when (monotonic)."""
    deadline = time.monotonic() + timeout
    while stats.answered < count:
        alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {stats.answered} of {count} clicks answered after {timeout} s")
        await asyncio.sleep(0.002)
    return time.monotonic()


@dataclasses.dataclass
class Served:
    clicks_per_s: float
    cpu_us_per_click: float


@contextlib.asynccontextmanager
async def clients(settings: Settings, linger_ms: int) -> AsyncIterator[tuple[AIOKafkaProducer, OnlineStats]]:
    """A click producer, and the suggestions read back into an `OnlineStats` while the block runs."""
    producer, consumer = kafka_producer(settings, linger_ms=linger_ms), suggestion_consumer(settings)
    await producer.start()
    await consumer.start()
    stats = OnlineStats()
    receiving = asyncio.create_task(receive_suggestions(consumer, stats))
    try:
        yield producer, stats
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        await producer.stop()
        await consumer.stop()


async def serve_backlog(settings: Settings, clicks: list[LoggedClick], start, pid, alive) -> tuple[Served, OnlineStats]:
    """Fill the clicks topic, start the server, and time it from its first suggestion to its last."""
    async with clients(settings, linger_ms=5) as (producer, stats):
        await send_clicks(producer, settings.clicks_topic, clicks, None, stats.clicked)
        start()
        first = await wait_answered(stats, 1, alive)
        cpu_first = cpu_seconds(pid())
        last = await wait_answered(stats, len(clicks), alive)
        cpu_used = cpu_seconds(pid()) - cpu_first
        served = Served((len(clicks) - 1) / (last - first), 1e6 * cpu_used / (len(clicks) - 1))
        return served, stats


def histogram_quantiles(before: dict[str, float], after: dict[str, float], *qs: float) -> list[float]:
    """Quantiles of a Prometheus histogram's increase, interpolated linearly within buckets (as
    `histogram_quantile` does)."""
    bounds = sorted((float(le), after[le] - before.get(le, 0.0)) for le in after)
    total = bounds[-1][1]
    results = []
    for q in qs:
        rank, lower, below = q * total, 0.0, 0.0
        for upper, cumulative in bounds:
            if cumulative >= rank:
                upper = lower if upper == float("inf") else upper
                share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
                results.append(lower + (upper - lower) * share)
                break
            lower, below = upper, cumulative
    return results


def processing_buckets(worker: WorkerProcess) -> dict[str, float]:
    return {
        labels["le"]: value for labels, value in worker.metric_samples("nextclick_processing_latency_seconds_bucket")
    }


# --- the measurements ----------------------------------------------------------------------------


def onnxruntime_alone(scorer: Scorer, settings: Settings, sessions: list[list[int]], seconds: float = 3.0) -> float:
    """The pipeline's model calls alone, a batch of test clicks each: a click with the session's clicks up to it
    (what NARM and DIEN read) and random floats as GRU4Rec's state before it."""
    clicks = [(items[p], items[: p + 1][-scorer.window :] if scorer.window else [])
              for items in sessions for p in range(len(items))]
    batch = settings.batch_size
    rows = (clicks * (batch // max(1, len(clicks)) + 1))[:batch]
    items = np.array([item for item, _ in rows], dtype=np.int64)
    windows = [window for _, window in rows]
    hidden = np.random.default_rng(0).standard_normal((scorer.layers, batch, scorer.hidden_size)).astype(np.float32)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        scorer.score(items, hidden if scorer.stateful else None, windows)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def run_fields(broker: EmbeddedBroker, artifact: Path, tag: str) -> dict:
    return {
        **TANSU_WORKER_TUNING,
        "bootstrap_servers": broker.bootstrap_servers,
        "serving_artifact_dir": artifact,
        "web_port": free_port(),
        "app_id": f"bench-{tag}",
        "clicks_topic": f"clicks-{tag}",
        "recommendations_topic": f"suggestions-{tag}",
        "dead_letter_topic": f"dlq-{tag}",
    }


async def bare_loop_run(fields: dict, artifact: Path, clicks: list[LoggedClick], log: Path) -> Served:
    settings = Settings(**fields)
    await create_topics(settings, settings.clicks_topic, settings.recommendations_topic)
    env = os.environ | {f"NEXTCLICK_{k.upper()}": str(v) for k, v in fields.items()} | {"PYTHONPATH": str(REPO_ROOT)}
    process: list[subprocess.Popen] = []

    def start() -> None:
        with log.open("ab") as out:
            process.append(subprocess.Popen(
                [sys.executable, str(BARE_LOOP), "--artifact", str(artifact), "--clicks-topic",
                 settings.clicks_topic, "--out-topic", settings.recommendations_topic, "--group", fields["app_id"]],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            ))

    def alive() -> None:
        if process and process[0].poll() is not None:
            raise RuntimeError(f"the bare loop exited; see {log}")

    try:
        served, _ = await serve_backlog(settings, clicks, start, lambda: process[0].pid, alive)
        return served
    finally:
        if process:
            process[0].kill()
            process[0].wait()


async def worker_runs(args: argparse.Namespace, fields: dict, backlog: list[LoggedClick], clicks: Iterator[LoggedClick],
                      tag: str, log: Path, latency: bool, memory: bool) -> Served:
    """A worker with `fields` serves `backlog` (b), then if asked clicks at a rate (c) and new sessions (d)."""
    worker = WorkerProcess(fields, log)
    settings = worker.settings
    await create_topics(settings, settings.clicks_topic, settings.recommendations_topic)
    pid = lambda: worker.process.pid
    try:
        served, _ = await serve_backlog(settings, backlog, worker.start, pid, worker.check_alive)
        if latency and args.rate_seconds > 0:
            await latency_run(args, worker, take(clicks, int(args.rate * args.rate_seconds), tag + "r"))
        if memory and args.memory_sessions > 0:
            sessions = [LoggedClick(f"m{n}{tag}", c.item_id, 0.0)
                        for n, c in enumerate(take(clicks, args.memory_sessions))]
            await memory_run(worker, sessions)
        return served
    finally:
        worker.stop()


async def feed(settings: Settings, clicks: list[LoggedClick], schedule: list[float] | None, alive,
               linger_ms: int = 5) -> tuple[OnlineStats, list[float]]:
    """Send `clicks` (on `schedule`, or as fast as possible) and wait until each has its suggestion; with how
    late each click left (`send_clicks`)."""
    async with clients(settings, linger_ms=linger_ms) as (producer, stats):
        lateness = await send_clicks(producer, settings.clicks_topic, clicks, schedule, stats.clicked)
        await wait_answered(stats, len(clicks), alive)
        return stats, lateness


async def latency_run(args: argparse.Namespace, worker: WorkerProcess, clicks: list[LoggedClick]) -> None:
    before, cpu_before = processing_buckets(worker), cpu_seconds(worker.process.pid)
    stats, lateness = await feed(worker.settings, clicks, rate_schedule(len(clicks), args.rate), worker.check_alive,
                                 args.client_linger_ms)
    after, cpu_used = processing_buckets(worker), cpu_seconds(worker.process.pid) - cpu_before
    own = "not exported" if not after else "p50 {:.2f} ms, p99 {:.2f} ms".format(
        *(1000 * q for q in histogram_quantiles(before, after, 0.5, 0.99))
    )
    e50, e99 = (1000 * q for q in percentiles(stats.latencies, 50, 99))
    l99, late = 1000 * percentiles(lateness, 99)[0], sum(behind > SENT_LATE for behind in lateness)
    tuning = (f"fetch wait {worker.settings.consumer_fetch_max_wait} s, {worker.settings.broker_end_offsets} ends,"
              f" clicks sent with {args.client_linger_ms} ms linger")
    print(f"(c) {len(clicks)} clicks at {args.rate:.0f} clicks/s ({tuning}): the worker's own time per click {own};"
          f" click -> suggestion read back p50 {e50:.1f} ms, p99 {e99:.1f} ms;"
          f" {1e6 * cpu_used / len(clicks):.0f} µs CPU per click; the sender behind its schedule p99 {l99:.1f} ms,"
          f" max {1000 * max(lateness):.1f} ms, {late} clicks over {1000 * SENT_LATE:.0f} ms", flush=True)


async def memory_run(worker: WorkerProcess, sessions: list[LoggedClick]) -> None:
    """RSS growth over the second half of `sessions`: the first half also grows the pools that serving
    itself needs (producer batches, delivery futures, onnxruntime's arena), which do not grow again."""
    half = len(sessions) // 2
    await feed(worker.settings, sessions[:half], None, worker.check_alive)
    await asyncio.sleep(2.0)
    rss_before = rss_bytes(worker.process.pid)
    await feed(worker.settings, sessions[half:], None, worker.check_alive)
    await asyncio.sleep(2.0)
    grown = (rss_bytes(worker.process.pid) - rss_before) / (len(sessions) - half)
    scorer = Scorer(worker.settings.serving_artifact_dir, pipeline=worker.settings.serving_model)
    raw = 4 * scorer.layers * scorer.hidden_size + 4 if scorer.stateful else 4
    kept = "hidden float32s + one 4-byte item id" if scorer.stateful else "no hidden state: one 4-byte item id"
    print(f"(d) worker RSS growth from {half} to {len(sessions)} sessions of 1 click: {grown:.0f} B per session;"
          f" raw state {raw} B ({kept}): {grown / raw:.2f}x", flush=True)


def kept_clicks_table(scorer: Scorer, sessions: list[list[str]], count: int) -> None:
    """RSS of `count` session records of KEPT_CLICKS clicks each, held as the worker's table holds them. Each
    keeps the offset of its last click, as the worker's records do once the clicks before it are committed
    (`SessionState.forget_committed`). Built in a fresh process: this one's freed heap would take the records
    in and hide their size."""
    items = [item for session in sessions for item in session]
    suggested = scorer.item_hashes[: get_settings().top_k]
    hidden = np.random.default_rng(0).standard_normal((scorer.layers, scorer.hidden_size)).astype("<f4").tobytes()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        record, grown = fresh.submit(
            table_rss, items, suggested, hidden, [scorer.name, scorer.version, "current"], count
        ).result()
    raw_items = len(hidden) + 4 * KEPT_CLICKS
    print(f"    {count} records of {KEPT_CLICKS} kept clicks (the last one's offset, and a {len(suggested)}-item"
          f" suggestion): record {record:.0f} B, RSS {grown:.0f} B per session; raw {raw_items} B (hidden + item ids):"
          f" {grown / raw_items:.2f}x")


def table_rss(items: list[str], suggested: list[int], hidden: bytes, served_by: list[str],
              count: int) -> tuple[float, float]:
    """(mean record bytes, RSS growth per session) of a table of `count` records; run in a fresh process."""
    model, version, variant = served_by
    before = rss_bytes(os.getpid())
    table = {}
    for n in range(count):
        start = (n * 7) % (len(items) - KEPT_CLICKS)
        state = SessionState(
            items=items[start : start + KEPT_CLICKS], last_seen=time.time(), hidden=hidden, artifact_version=version,
            offsets=[10_000_000 + 97 * n], suggested=suggested, model=model, variant=variant,
        )
        table[f"{n}~0".encode()] = state.dumps()
    grown = (rss_bytes(os.getpid()) - before) / count
    return float(np.mean([len(r) for r in itertools.islice(table.values(), 1000)])), grown


MEMBERSHIP_CHANGES = ("a second worker joins", "the first is SIGKILLed", "a third joins", "the second leaves")


async def rebalance_pauses(args: argparse.Namespace, broker: EmbeddedBroker, artifact: Path,
                           clicks: Iterator[LoggedClick], tmp: Path) -> None:
    """(e) Clicks at `--rebalance-rate` while workers join, crash and leave (`MEMBERSHIP_CHANGES`, one every
    `--rebalance-every` s); for each change, the worst click -> suggestion latency of the clicks sent in the
    interval after it, next to the p99 before the first."""
    tag = uuid.uuid4().hex[:6]
    fields = run_fields(broker, artifact, f"scale-{tag}")
    settings = Settings(**fields)
    await create_topics(settings, settings.clicks_topic, settings.recommendations_topic)
    workers: dict[str, WorkerProcess] = {}

    def launch(name: str) -> None:
        workers[name] = WorkerProcess(fields | {"web_port": free_port()}, tmp / f"scale-{name}.log").start()
        workers[name].wait_ready(timeout=120)

    every, count = args.rebalance_every, int(args.rebalance_rate * args.rebalance_every * (len(MEMBERSHIP_CHANGES) + 1))
    producer, consumer = kafka_producer(settings, linger_ms=0), suggestion_consumer(settings)
    latency: dict[tuple[str, float], float] = {}  # (session, sent at) -> first suggestion's latency

    async def receive() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            received_at = time.time()
            for record in (r for records in batches.values() for r in records):
                suggestion = json.loads(record.value)
                key = (suggestion["session_id"], suggestion["click"]["timestamp"])
                latency.setdefault(key, received_at - key[1])

    await asyncio.to_thread(launch, "first")
    await producer.start()
    await consumer.start()
    receiving = asyncio.create_task(receive())
    sent: list[tuple[str, float]] = []
    try:
        started = time.time()
        sending = asyncio.create_task(send_clicks(
            producer, settings.clicks_topic, take(clicks, count, tag), rate_schedule(count, args.rebalance_rate),
            lambda click, sent_at: sent.append((click.session_id, sent_at)),
        ))
        changes = []
        for number, _change in enumerate(MEMBERSHIP_CHANGES, start=1):
            await asyncio.sleep(max(0.0, started + number * every - time.time()))
            changes.append(time.time())
            if number in (1, 3):
                await asyncio.to_thread(launch, "second" if number == 1 else "third")
            elif number == 2:
                workers["first"].kill()
            else:
                await asyncio.to_thread(workers["second"].stop)
        await sending
        deadline = time.monotonic() + 120
        while len(latency) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        await producer.stop()
        await consumer.stop()
        for worker in workers.values():
            worker.stop()
    unanswered = len(sent) - sum(key in latency for key in sent)
    steady = [latency[k] for k in sent if k in latency and k[1] < changes[0]]
    print(f"(e) {len(sent)} clicks at {args.rebalance_rate:.0f} clicks/s over 4 partitions, "
          f"a change every {every:.0f} s"
          f" ({unanswered} unanswered); before any change: p99 {1000 * percentiles(steady, 99)[0]:.0f} ms")
    bounds = [*changes, float("inf")]
    for change, start, end in zip(MEMBERSHIP_CHANGES, bounds, bounds[1:]):
        window = [latency[k] for k in sent if start <= k[1] < end and k in latency]
        print(f"    {change}: worst click -> suggestion {max(window, default=float('nan')):.2f} s"
              f" (p99 {percentiles(window, 99)[0]:.2f} s) over the {len(window)} clicks sent until the next change")


# The embedded broker's group timings change how fast workers join and fail over, not the steady state: (b)-(d)
# keep them, and the worker's defaults (a real Kafka's) for the rest of the tuning, for the worker and the bare loop.
GROUP_TIMINGS = ("broker_session_timeout", "broker_heartbeat_interval", "broker_rebalance_timeout",
                 "broker_commit_interval")
DEFAULT_TUNING = {
    name: Settings.model_fields[name].default for name in TANSU_WORKER_TUNING if name not in GROUP_TIMINGS
}
# A fetch wait short enough that the embedded broker hands clicks over about as they come, as Kafka does (--help).
KAFKA_LIKE_FETCH_WAIT = 0.01


async def measure(args: argparse.Namespace, broker: EmbeddedBroker, artifact: Path, clicks: Iterator[LoggedClick],
                  tmp: Path, ort_rate: float) -> None:
    serving = DEFAULT_TUNING | {"consumer_fetch_max_wait": args.fetch_max_wait}
    for repetition in range(args.repeat):
        tag = uuid.uuid4().hex[:6]
        batch = take(clicks, args.clicks, tag)
        bare_fields = run_fields(broker, artifact, f"bare-{tag}") | serving
        bare = await bare_loop_run(bare_fields, artifact, batch, tmp / "bare.log")
        served = await worker_runs(args, run_fields(broker, artifact, f"worker-{tag}") | serving,
                                   take(clicks, args.clicks, tag), clicks, tag, tmp / f"worker-{tag}.log",
                                   latency=False, memory=False)
        print(f"(b) run {repetition + 1}: bare loop {bare.clicks_per_s:,.0f} clicks/s ({bare.cpu_us_per_click:.0f} µs"
              f" CPU/click); worker {served.clicks_per_s:,.0f} clicks/s ({served.cpu_us_per_click:.0f} µs CPU/click);"
              f" worker / bare loop {served.clicks_per_s / bare.clicks_per_s:.2f}"
              f" (CPU per click {bare.cpu_us_per_click / served.cpu_us_per_click:.2f});"
              f" worker / onnxruntime alone {served.clicks_per_s / ort_rate:.2f}", flush=True)
        if args.embedded_tuning:
            embedded = await worker_runs(args, run_fields(broker, artifact, f"tansu-{tag}"),
                                         take(clicks, args.clicks, tag + "t"), clicks, tag + "t",
                                         tmp / f"tansu-{tag}.log", latency=False, memory=False)
            print(f"(b) run {repetition + 1}: worker with the embedded broker's tuning {embedded.clicks_per_s:,.0f}"
                  f" clicks/s ({embedded.cpu_us_per_click:.0f} µs CPU/click); embedded / default tuning"
                  f" {embedded.clicks_per_s / served.clicks_per_s:.2f}", flush=True)
    if args.rate_seconds <= 0 and args.memory_sessions <= 0:
        return
    tag = uuid.uuid4().hex[:6]
    await worker_runs(args, run_fields(broker, artifact, f"steady-{tag}") | serving, take(clicks, WARM_UP_CLICKS, tag),
                      clicks, tag, tmp / f"steady-{tag}.log", latency=True, memory=True)
    if args.embedded_tuning and args.rate_seconds > 0:
        await worker_runs(args, run_fields(broker, artifact, f"tansu-steady-{tag}"),
                          take(clicks, WARM_UP_CLICKS, tag + "t"), clicks, tag + "t", tmp / f"tansu-steady-{tag}.log",
                          latency=True, memory=False)


def main() -> None:
    unwind_on_sigterm()
    args = parse_args()
    settings = get_settings()
    artifact = args.artifact or demo_artifact(settings, QUICK_EPOCHS)
    scorer = served_scorer(artifact, settings)  # as the worker builds it: its threads, top-K index, provider
    dataset, sessions = test_sessions(artifact, settings)
    print(machine_line(f"onnxruntime {onnxruntime.__version__} ({scorer.provider})"))
    state = f"hidden {scorer.hidden_size}" if scorer.stateful else f"reads the last {scorer.window} clicks"
    print(f"model: {scorer.name} artifact {scorer.version} ({artifact.name}), {state},"
          f" {len(scorer.item_ids)} items, top_k {settings.top_k}; clicks: {dataset} test sessions,"
          f" {args.sessions} interleaved")
    print(f"worker: 1 process, {settings.partitions} partitions, batch_size {settings.batch_size}"
          f", inference_threads {settings.inference_threads}, table"
          f" {settings.table_store}; broker: embedded Tansu (memory), {TANSU_WORKER_TUNING};"
          f" in (b)-(d) {DEFAULT_TUNING | {'consumer_fetch_max_wait': args.fetch_max_wait}}")
    ort_rate = onnxruntime_alone(scorer, settings, [scorer.known_indices(items) for items in sessions[:2000]])
    print(f"(a) onnxruntime alone ({scorer.name}), batch {settings.batch_size}: {ort_rate:,.0f} clicks/s")
    clicks = interleaved(sessions, args.sessions)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        asyncio.run(measure(args, broker, artifact, clicks, Path(tmp), ort_rate))
        if args.rebalance_every > 0:
            asyncio.run(rebalance_pauses(args, broker, artifact, clicks, Path(tmp)))
    if args.memory_sessions > 0:
        kept_clicks_table(scorer, sessions, args.memory_sessions)


if __name__ == "__main__":
    main()
