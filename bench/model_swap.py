"""Hot-swap benchmark: a worker under steady load is told to serve a new version; how long, what it costs.

    python bench/model_swap.py [--rate 1000] [--seconds 20] [--promote-after 8]

The embedded broker and one worker in store mode (a local artifact store in a temporary folder,
announcements on the model-updates topic, the worker's pointer polling left at its default),
serving the demo's GRU4Rec. Real test-day sessions are sent at `--rate` clicks/s (the day's sessions
in time order, again with new session ids once they run out); after `--promote-after` seconds a
second, genuinely different model (the same recipe with another seed) is promoted the way the CLI
does it (pointer, then announcement). Prints: seconds from the promotion to the first suggestion
from the new version; clicks lost (never answered) and duplicated (answered more than once); and
clicks delayed by the swap: sent between the promotion and one second after the first new-version
suggestion, and answered later than the 99th percentile of the clicks sent before the promotion.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime
from stream_throughput import create_topics, demo_day_sessions, interleaved, take

from devtools.click_replay import (
    LoggedClick,
    OnlineStats,
    WorkerProcess,
    kafka_producer,
    percentiles,
    rate_schedule,
    receive_suggestions,
    send_clicks,
    suggestion_consumer,
)
from devtools.demo import QUICK_EPOCHS, demo_artifact, train_quick_artifact
from devtools.embedded_broker import TANSU_WORKER_TUNING, EmbeddedBroker, free_port
from devtools.machine import machine_line
from devtools.stopping import unwind_on_sigterm
from stream_app.inference.artifact_format import ArtifactError, verify_artifact
from stream_app.inference.scoring import Scorer
from stream_app.release.publish import promote_and_announce
from stream_app.release.store import ArtifactStore
from stream_app.settings import Settings, get_settings

SECOND_SEED = "2"  # the new model: the demo's recipe with another seed
WARM_UP = 2.0  # seconds of load left out of the pre-swap latency baseline
AFTER_FIRST_NEW = 1.0  # the swap window ends this long after the first new-version suggestion
SESSIONS_AT_ONCE = 100  # test sessions clicking side by side, each pass with new ids
STORE_VARIABLES = ("NEXTCLICK_ARTIFACT_DIR", "NEXTCLICK_ARTIFACT_STORE_URL", "NEXTCLICK_SERVING_ARTIFACT_DIR")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="clicks/s sent during the whole run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load")
    parser.add_argument(
        "--promote-after", type=float, default=8.0, help="seconds of load before the promotion"
    )
    return parser.parse_args()


def second_model(settings: Settings) -> Path:
    """The demo's recipe with another seed, trained once into NEXTCLICK_ARTIFACT_DIR/bench-swap."""
    out = settings.artifact_dir / "bench-swap"
    try:
        verify_artifact(out)
        return out
    except ArtifactError:
        return train_quick_artifact(out, QUICK_EPOCHS, "--gru4rec-seed", SECOND_SEED)


@dataclass
class SwapStats(OnlineStats):
    """OnlineStats plus, per click sent, its send time and every answer (receive time, version)."""

    sent_at: dict[tuple[str, float], float] = field(default_factory=dict)
    answers: dict[tuple[str, float], list[tuple[float, str]]] = field(default_factory=dict)

    def clicked(self, click: LoggedClick, sent_at: float) -> None:
        super().clicked(click, sent_at)
        self.sent_at[(click.session_id, sent_at)] = sent_at

    def suggested(self, suggestion: dict[str, Any], received_at: float) -> None:
        super().suggested(suggestion, received_at)
        key = (suggestion["session_id"], suggestion["click"]["timestamp"])
        self.answers.setdefault(key, []).append((received_at, suggestion["artifact_version"]))

    def first_answer_from(self, version: str) -> float:
        times = [at for answers in self.answers.values() for at, v in answers if v == version]
        if not times:
            raise RuntimeError(f"no suggestion came from {version}: the worker never swapped (see its log)")
        return min(times)

    def latencies_sent_between(self, start: float, end: float) -> list[float]:
        return [
            self.answers[key][0][0] - sent
            for key, sent in self.sent_at.items()
            if start <= sent < end and key in self.answers
        ]


async def drain(stats: SwapStats, worker: WorkerProcess, quiet_seconds: float = 5.0) -> None:
    """Wait until every click has its suggestion, or none came for `quiet_seconds`."""
    last, quiet_since = stats.received, time.monotonic()
    while stats.answered < stats.sent and time.monotonic() - quiet_since < quiet_seconds:
        worker.check_alive()
        await asyncio.sleep(0.1)
        if stats.received != last:
            last, quiet_since = stats.received, time.monotonic()
    await asyncio.sleep(1.0)  # repeats, if any, arrive after the first answers


async def measure(args: argparse.Namespace, worker: WorkerProcess, store: ArtifactStore, new: str) -> None:
    settings = worker.settings
    await create_topics(settings)
    stats = SwapStats()
    clicks = interleaved(demo_day_sessions(settings), SESSIONS_AT_ONCE)
    producer, consumer = kafka_producer(settings, linger_ms=5), suggestion_consumer(settings)
    await producer.start()
    await consumer.start()
    receiving = asyncio.create_task(receive_suggestions(consumer, stats))
    try:
        worker.start()
        worker.wait_ready(timeout=120)
        count = int(args.rate * args.seconds)
        load_started = time.time()
        sending = asyncio.create_task(
            send_clicks(
                producer,
                settings.clicks_topic,
                take(clicks, count),
                rate_schedule(count, args.rate),
                stats.clicked,
            )
        )
        await asyncio.sleep(args.promote_after)
        backlog = stats.sent - stats.answered  # clicks still waiting for their suggestion
        promoted_at = time.time()
        await asyncio.to_thread(promote_and_announce, store, new, settings)
        await sending
        sent_until = time.time()
        await drain(stats, worker)
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        await producer.stop()
        await consumer.stop()

    report(stats, worker, new, load_started, promoted_at, sent_until, backlog)


def report(
    stats: SwapStats,
    worker: WorkerProcess,
    new: str,
    load_started: float,
    promoted_at: float,
    sent_until: float,
    backlog: int,
) -> None:
    first_new = stats.first_answer_from(new)
    lost = sum(1 for key in stats.sent_at if key not in stats.answers)
    duplicated = sum(1 for answers in stats.answers.values() if len(answers) > 1)
    baseline = stats.latencies_sent_between(load_started + WARM_UP, promoted_at)
    window = stats.latencies_sent_between(promoted_at, first_new + AFTER_FIRST_NEW)
    after = stats.latencies_sent_between(first_new + AFTER_FIRST_NEW, sent_until)
    [bar] = percentiles(baseline, 99)
    delayed = sum(1 for latency in window if latency > bar)
    seconds = sent_until - load_started
    print(
        f"load: {stats.sent} clicks at {stats.sent / seconds:.0f} clicks/s for {seconds:.1f} s;"
        f" promotion after {promoted_at - load_started:.1f} s, with {backlog} clicks unanswered"
        " (a worker that keeps up has only the last ~0.1 s of clicks in flight)"
    )
    print(f"(a) promotion -> first suggestion from the new version: {first_new - promoted_at:.2f} s")
    print(
        f"(b) clicks lost: {lost}, duplicated: {duplicated}"
        f" (suggestions received {stats.received} for {stats.answered} clicks)"
    )
    print(
        f"(c) clicks delayed by the swap: {delayed} of the {len(window)} sent from the promotion to"
        f" {AFTER_FIRST_NEW:.0f} s after the first new suggestion"
        f" (latency above the pre-swap p99, {bar * 1000:.1f} ms)"
    )
    for name, latencies in (("before", baseline), ("during", window), ("after", after)):
        p50, p99, top = (1000 * p for p in percentiles(latencies, 50, 99, 100))
        print(
            f"    latency {name} the swap: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {top:.1f} ms"
            f" ({len(latencies)} clicks)"
        )
    swaps = {
        labels["outcome"]: value for labels, value in worker.metric_samples("nextclick_model_swaps_total")
    }
    print(f"    worker's swaps: {swaps}")
    for line in worker.log_file.read_text().splitlines():
        if f" artifact {new} on " in line:  # the swap, with how long loading and checking took
            print(f"    worker's log: {line.split('] ', 3)[-1].strip()}")


def main() -> None:
    unwind_on_sigterm()
    args = parse_args()
    settings = get_settings()
    old_folder, new_folder = demo_artifact(settings, QUICK_EPOCHS), second_model(settings)
    old, new = Scorer(old_folder), Scorer(new_folder)
    base_env = {name: value for name, value in os.environ.items() if name not in STORE_VARIABLES}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        store = ArtifactStore(Path(tmp) / "store", Path(tmp) / "cache", keep_versions=5)
        store.push(old_folder)
        store.push(new_folder)
        store.promote(old.version)
        fields = {
            **TANSU_WORKER_TUNING,
            "bootstrap_servers": broker.bootstrap_servers,
            "artifact_dir": Path(tmp) / "store",
            "web_port": free_port(),
        }
        worker = WorkerProcess(fields, Path(tmp) / "worker.log", base_env=base_env)
        s = worker.settings
        print(
            machine_line(f"onnxruntime {onnxruntime.__version__} ({old.provider})")
        )
        size = sum(file.stat().st_size for file in new_folder.iterdir()) / 1e6
        print(
            f"models: {old.name} {old.version} -> {new.version} (hidden {old.hidden_size},"
            f" {len(old.item_ids)} and {len(new.item_ids)} items; {size:.1f} MB)"
        )
        print(
            f"worker: 1 process, {s.partitions} partitions, batch_size {s.batch_size}"
            f", max_history {s.max_history}, model_updates_topic"
            f" {s.model_updates_topic!r}, model_poll_interval {s.model_poll_interval} s;"
            " broker: embedded Tansu (memory)"
        )
        try:
            asyncio.run(measure(args, worker, store, new.version))
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
