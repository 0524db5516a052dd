"""Continuous training's cost: one incremental update over N new clicks, and from the last of those clicks to
a worker serving the new version, on the embedded broker.

    PYTHONPATH=. python bench/follow_update.py --artifact DIR [--dataset diginetica_srgnn] [--clicks 50000]

(a) `training.incremental.update` alone: the parent in DIR (its models, hyper-parameters and catalogue), the
    first N clicks of the data set's test sessions as the new clicks (the sessions after them, a tenth as
    many clicks, as the hold-out), the follower's default budget; seconds per model and in all.
(b) end to end: the embedded broker, a worker following a local store whose current version is DIR, and the
    follower (`training.follow`, in this process) with NEXTCLICK_FOLLOW_INTERVAL_CLICKS = N. The N clicks are
    produced at once; the clock runs from the last one acknowledged to the worker reporting the new version
    as served (`nextclick_model_info`). The gate's tolerance is opened for this run: it times the path, the
    verdict is the gate's tests' business.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from aiokafka import AIOKafkaProducer

from devtools.click_replay import WorkerProcess
from devtools.embedded_broker import TANSU_WORKER_TUNING, EmbeddedBroker, free_port
from devtools.stopping import unwind_on_sigterm
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.release.store import ArtifactStore
from stream_app.settings import Settings
from training.data.click_log import ClickLog
from training.data.datasets import load_dataset
from training.follow import Follower
from training.incremental import UpdateBudget, update

HOLDOUT_SHARE = Settings.model_fields["follow_holdout_share"].default


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True, help="the parent version (a retrain's --out)")
    parser.add_argument("--dataset", default="diginetica_srgnn", help="whose test sessions are the new clicks")
    parser.add_argument("--clicks", type=int, default=50_000, help="new clicks in the update")
    parser.add_argument("--skip-end-to-end", action="store_true", help="only (a)")
    return parser.parse_args()


def first_clicks(log: ClickLog, clicks: int) -> tuple[ClickLog, ClickLog]:
    """The sessions holding the first `clicks` clicks, and the next sessions holding a tenth as many."""
    offsets = log.session_offsets()
    n = int((offsets <= clicks).sum()) - 1
    m = int((offsets <= offsets[n] + clicks * HOLDOUT_SHARE).sum()) - 1
    return log.head_sessions(n), log.take_sessions((offsets[:-1] >= offsets[n]) & (offsets[:-1] < offsets[m]))


def update_alone(args: argparse.Namespace, new: ClickLog, held_out: ClickLog, tmp: Path) -> None:
    started, cpu = time.monotonic(), time.process_time()
    made = update(args.artifact, new, tmp / "update", budget=UpdateBudget(), cutoff={"until": None},
                  held_out=held_out.sessions_as_ids(), settings=Settings())
    seconds = json.loads((made.directory / "metrics.json").read_text())["incremental"]["seconds"]
    print(f"(a) update over {made.new_clicks:,} clicks ({made.new_sessions:,} sessions, {made.replayed_sessions:,} "
          f"replayed, {made.new_items} new items): {time.monotonic() - started:.1f} s wall, "
          f"{time.process_time() - cpu:.1f} s CPU; per model (grow, train, export, checkpoint): {seconds}")


async def produce(settings: Settings, log: ClickLog) -> float:
    """Every click of `log`, keyed by session, timestamped now; when the last was acknowledged."""
    producer = AIOKafkaProducer(acks="all", linger_ms=5, max_batch_size=256 * 1024, **aiokafka_client_kwargs(settings))
    await producer.start()
    try:
        now = time.time()
        sent = [await producer.send(settings.clicks_topic, json.dumps(
            {"session_id": s, "item_id": i, "timestamp": now}).encode(), key=s.encode())
            for s, i in zip(log.session_ids, log.item_ids, strict=True)]
        await asyncio.gather(*sent)
        return time.monotonic()
    finally:
        await producer.stop()


async def end_to_end(args: argparse.Namespace, worker: WorkerProcess, settings: Settings, log: ClickLog,
                     parent: str) -> None:
    follower = Follower(settings)
    following = asyncio.create_task(follower.run(rounds=1))
    last_acked = await produce(settings, log)
    served_at = None
    while served_at is None:
        worker.check_alive()
        if following.done():
            following.result()  # raises what failed
        versions = {labels["artifact_version"] for labels, value in worker.metric_samples("nextclick_model_info")
                    if value == 1 and labels.get("variant") == "current"}
        if versions - {parent}:
            served_at = time.monotonic()
        await asyncio.sleep(0.1)
    [outcome] = await following
    print(f"(b) last click acknowledged -> the worker serves {outcome.version}: {served_at - last_acked:.1f} s "
          f"(the update itself, training to push: {outcome.seconds:.1f} s; {outcome.trained_clicks:,} clicks trained, "
          f"{outcome.held_out_clicks:,} held out, gate {'passed' if outcome.promoted else 'refused'})")


def main() -> None:
    unwind_on_sigterm()
    args = parse_args()
    _, test = load_dataset(args.dataset)
    new, held_out = first_clicks(test, args.clicks)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        update_alone(args, new, held_out, tmp)
        if args.skip_end_to_end:
            return
        with EmbeddedBroker() as broker:
            store = ArtifactStore(tmp / "store", tmp / "cache", keep_versions=5)
            parent = store.push(args.artifact)
            store.promote(parent)
            fields = {**TANSU_WORKER_TUNING, "bootstrap_servers": broker.bootstrap_servers,
                      "artifact_dir": tmp / "store", "artifact_cache_dir": tmp / "worker-cache",
                      "web_port": free_port(), "table_dir": tmp / "tables"}
            settings = Settings(**fields | {"artifact_cache_dir": tmp / "follower-cache", "follow_metrics_port": 0,
                                            "follow_interval_clicks": new.n_clicks, "quality_gate_tolerance": 1.0})
            worker = WorkerProcess(fields, tmp / "worker.log", base_env={
                k: v for k, v in os.environ.items() if not k.startswith("NEXTCLICK_")})
            with worker:
                worker.wait_ready(timeout=60.0, checks=["partitions_assigned", "tables_recovered", "model_loaded"])
                asyncio.run(end_to_end(args, worker, settings, new, parent))


if __name__ == "__main__":
    main()
