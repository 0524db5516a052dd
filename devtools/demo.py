"""`python -m devtools.demo`: the whole pipeline live on one machine, fed by the real test day.

Starts the embedded broker (Tansu) and a worker, replays the clicks of `yoochoose_rsc15_100k`'s
test day in time order with their logged gaps divided by `--speedup`, and shows live what comes
back: clicks/s sent, suggestions/s received, online hit rate, click→suggestion latency. Serves the
artifact at NEXTCLICK_SERVING_ARTIFACT_DIR when it is valid, else trains a quick one first.
Ctrl-C stops it cleanly and prints the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from devtools.embedded_broker import TANSU_WORKER_TUNING, EmbeddedBroker, free_port
from devtools.click_replay import (
    LoggedClick,
    OnlineStats,
    WorkerProcess,
    held_out_clicks,
    kafka_producer,
    receive_suggestions,
    send_clicks,
    speedup_schedule,
    suggestion_consumer,
)
from stream_app.artifact_format import ArtifactError, verify_artifact
from stream_app.settings import REPO_ROOT, Settings, get_settings

#: The quick model trained when no artifact is there: the official YOOCHOOSE settings on the full
#: slice, but only this many epochs (about a minute each on two cores) instead of 10.
QUICK_EPOCHS = 1
REFRESH_SECONDS = 0.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--speedup", type=float, default=600.0, help="divide the logged gaps between clicks by this"
    )
    parser.add_argument("--max-clicks", type=int, help="send only the first N clicks of the test day")
    parser.add_argument("--duration", type=float, help="stop sending after this many seconds")
    parser.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="after the last click, wait at most this many seconds without a new suggestion",
    )
    parser.add_argument(
        "--epochs", type=int, default=QUICK_EPOCHS, help="epochs of the quick model, if one is trained"
    )
    parser.add_argument(
        "--log-dir", type=Path, default=REPO_ROOT / "runs" / "demo", help="broker and worker logs"
    )
    return parser.parse_args(argv)


def demo_artifact(settings: Settings, epochs: int) -> Path:
    """NEXTCLICK_SERVING_ARTIFACT_DIR if set and valid, else the demo's own quick one, trained when missing."""
    quick = settings.artifact_dir / "demo"
    for candidate in filter(None, (settings.serving_artifact_dir, quick)):
        with contextlib.suppress(ArtifactError):
            verify_artifact(candidate)
            return candidate
    return train_quick_artifact(quick, epochs)


def train_quick_artifact(out: Path, epochs: int, *flags: str) -> Path:
    """A quick GRU4Rec: `epochs` of configs/gru4rec_yoochoose.toml on yoochoose_rsc15_100k (then `flags`)."""
    print(
        f"training a quick GRU4Rec ({epochs} epoch(s) of configs/gru4rec_yoochoose.toml on"
        f" yoochoose_rsc15_100k) into {out}",
        flush=True,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training.retrain",
            "--dataset",
            "yoochoose_rsc15_100k",
            "--models",
            "gru4rec",
            "--config",
            str(REPO_ROOT / "configs" / "gru4rec_yoochoose.toml"),
            "--epochs",
            str(epochs),
            "--out",
            str(out),
            *flags,
        ],
        check=True,
    )
    return out


def status_line(stats: OnlineStats, suggestions_per_second: float, top_k: int) -> str:
    p50, p99 = stats.latency_percentiles(50, 99)
    return (
        f"suggestions/s {suggestions_per_second:.0f}, hit-rate@{top_k} {stats.hit_rate:.3f},"
        f" latency p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms"
    )


async def watch(progress: tqdm, stats: OnlineStats, worker: WorkerProcess) -> None:
    """Refresh the status line; fail as soon as the worker dies."""
    last_received, last_time = 0, time.monotonic()
    while True:
        await asyncio.sleep(REFRESH_SECONDS)
        worker.check_alive()
        now = time.monotonic()
        rate = (stats.received - last_received) / (now - last_time)
        last_received, last_time = stats.received, now
        progress.set_postfix_str(status_line(stats, rate, worker.settings.top_k))


async def drain(stats: OnlineStats, quiet_seconds: float) -> None:
    """Wait until every click sent has its suggestion, or none came for `quiet_seconds`."""
    last_answered, quiet_since = stats.answered, time.monotonic()
    while stats.answered < stats.sent and time.monotonic() - quiet_since < quiet_seconds:
        await asyncio.sleep(0.1)
        if stats.answered != last_answered:
            last_answered, quiet_since = stats.answered, time.monotonic()


async def until_first(tasks: set[asyncio.Task]) -> None:
    """Wait for the first of `tasks` to end; re-raise its error (a dead worker, a failed send)."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()


async def replay_live(
    args: argparse.Namespace, worker: WorkerProcess, clicks: list[LoggedClick]
) -> OnlineStats:
    """Send the clicks on schedule while showing the suggestions; Ctrl-C ends it early."""
    stats = OnlineStats()
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    producer, consumer = kafka_producer(worker.settings), suggestion_consumer(worker.settings)
    await producer.start()
    await consumer.start()
    progress = tqdm(total=len(clicks), unit="click", desc="clicks sent", dynamic_ncols=True)

    def sent(click: LoggedClick, sent_at: float) -> None:
        stats.clicked(click, sent_at)
        progress.update()

    tasks = {
        asyncio.create_task(receive_suggestions(consumer, stats)),
        watcher := asyncio.create_task(watch(progress, stats, worker)),
        interruption := asyncio.create_task(interrupted.wait()),
    }
    try:
        schedule = speedup_schedule(clicks, args.speedup)
        sending = asyncio.create_task(
            send_clicks(producer, worker.settings.clicks_topic, clicks, schedule, sent)
        )
        tasks.add(sending)
        ends = {sending, watcher, interruption}
        if args.duration is not None:
            tasks.add(timer := asyncio.create_task(asyncio.sleep(args.duration)))
            ends.add(timer)
        await until_first(ends)
        if not interrupted.is_set():
            sending.cancel()
            tasks.add(draining := asyncio.create_task(drain(stats, args.drain)))
            await until_first({draining, watcher, interruption})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        progress.close()
        loop.remove_signal_handler(signal.SIGINT)
        await producer.stop()
        await consumer.stop()
    return stats


def summary(stats: OnlineStats, elapsed: float, top_k: int, metrics_url: str) -> str:
    p50, p95, p99 = stats.latency_percentiles(50, 95, 99)
    return "\n".join(
        [
            f"clicks sent: {stats.sent} in {elapsed:.1f} s",
            (
                f"suggestions received: {stats.received} for {stats.answered} clicks"
                f" ({stats.received - stats.answered} repeated)"
            ),
            f"hit-rate@{top_k}: {stats.hit_rate:.3f} over {stats.judged} suggestions with a known next click",
            (
                f"click->suggestion latency: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms,"
                f" p99 {p99 * 1000:.1f} ms"
            ),
            f"worker metrics were served at {metrics_url}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:  # before the replay started: the with-blocks stopped everything
        print("interrupted before the replay started", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    artifact = demo_artifact(settings, args.epochs)
    clicks = held_out_clicks(settings, args.max_clicks)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_file=args.log_dir / "broker.log") as broker:
        fields = {
            **TANSU_WORKER_TUNING,
            "bootstrap_servers": broker.bootstrap_servers,
            "serving_artifact_dir": artifact,
            "web_port": free_port(),
        }
        with WorkerProcess(fields, args.log_dir / "worker.log") as worker:
            print(
                f"broker pid {broker.pid} at {broker.bootstrap_servers}, worker pid {worker.process.pid}"
                f" serving {artifact} (log: {worker.log_file})\nmetrics: {worker.metrics_url}",
                flush=True,
            )
            worker.wait_ready()
            started = time.monotonic()
            stats = asyncio.run(replay_live(args, worker, clicks))
            elapsed = time.monotonic() - started
    print(summary(stats, elapsed, worker.settings.top_k, worker.metrics_url), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
