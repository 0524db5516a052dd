"""Issue 36's bar through Kafka: one worker serving live V-SKNN, live STAN, the blend and the neural pipeline, each
with a session index of `--index-sessions` sessions read from the clicks topic before it serves.

    PYTHONPATH=. python bench/knn_worker.py --artifact DIR [--index-sessions 1000000] [--clicks 20000]
        [--pipelines gru4rec vsknn stan blend]

bench/knn_serving.py times the scoring without Kafka; bench/stream_throughput.py times a worker whose index holds
only the clicks it serves. Here the worker reads a full index the way it does in production, at start, from the
clicks topic (`stream_app.worker.clicks_reader`), then serves a backlog:

1. Fill: the clicks topic gets `--index-sessions` sessions of the training split of the artifact's data set
   (metrics.json's `dataset`), click by click. Beyond the data set's sessions (186,670 for Diginetica) they are its
   sessions again under new ids: the index's memory and neighbour search see that many sessions, the item
   distribution is the real one. Sent just before the workers start, so inside their `knn_window`.
2. Per pipeline of `--pipelines` (`gru4rec`, `vsknn`, `stan` with its settings' defaults, and `artifact` on a copy of
   the artifact that records the blend of GRU4Rec and V-SKNN at `--blend-weight`; the weight changes no cost): the
   worker's consumer group is committed at the topic's end, so it serves none of the fill; `--clicks` test clicks
   (interleaved as stream_throughput's) are appended; the worker starts with NEXTCLICK_KNN_SESSIONS =
   `--index-sessions` and reads the whole window into its index before it serves: the fill, its own clicks (the
   backlog it serves; indexing a click again changes nothing) and the clicks of the pipelines before it, so the index
   is full and stays full, each new session replacing the oldest, as a live worker's does.

Prints the fill's clicks/s and the broker's resident memory after it; per pipeline the index load (seconds from
the worker's start to `knn_index_loaded`, which the default tuning's listed ends set up to one record batch per
partition early: `stream_app.partition_ends`; the worker's resident memory grown per indexed session from half the
index to all of it) and clicks/s from the first suggestion to the last, with the bare aiokafka loop's on the same
clicks just before (`bench/bare_loop.py` serving GRU4Rec: it has no index, so the kNN pipelines' ratio is what
the index costs beyond a bare loop's neural model call).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.stream_throughput import (
    DEFAULT_TUNING,
    KAFKA_LIKE_FETCH_WAIT,
    Served,
    bare_loop_run,
    create_topics,
    interleaved,
    rss_bytes,
    run_fields,
    serve_backlog,
    take,
    test_sessions,
)
from devtools.artifact_versions import edit_manifest, renamed
from devtools.click_replay import LoggedClick, WorkerProcess, kafka_producer, send_clicks
from devtools.embedded_broker import EmbeddedBroker
from devtools.machine import machine_line
from devtools.stopping import unwind_on_sigterm
from stream_app.inference.artifact_format import MANIFEST, METRICS
from stream_app.inference.served_pipeline import ServingPipeline
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.partition_ends import checked_ends
from stream_app.settings import Settings

FILL_CHUNK = 50_000  # clicks sent between two waits for the broker's acknowledgements (bounds the futures held)
# pipeline: its NEXTCLICK_SERVING_MODEL
SERVING_MODELS = {"gru4rec": "gru4rec", "vsknn": "vsknn", "stan": "stan", "blend": "artifact"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True, help="a GRU4Rec artifact of a trainer's data set")
    parser.add_argument("--index-sessions", type=int, default=1_000_000, help="sessions in the index when serving")
    parser.add_argument("--clicks", type=int, default=20_000, help="test clicks served per pipeline")
    parser.add_argument("--sessions", type=int, default=2_000, help="test sessions interleaved")
    parser.add_argument("--blend-weight", type=float, default=0.5, help="the blend's neural weight")
    parser.add_argument("--pipelines", nargs="+", choices=list(SERVING_MODELS), default=list(SERVING_MODELS),
                        help="the pipelines served, in this order")
    return parser.parse_args()


def training_sessions(artifact: Path) -> list[list[str]]:
    from training.data.datasets import load_dataset  # the trainer's readers

    return load_dataset(json.loads((artifact / METRICS).read_text())["dataset"])[0].sessions_as_ids()


def fill_clicks(sessions: list[list[str]], count: int) -> Iterator[LoggedClick]:
    """`count` sessions, click by click: `sessions` in turn, each pass under new ids."""
    passes = ((f"fill{number}~{rerun}", items) for rerun in itertools.count() for number, items in enumerate(sessions))
    for session_id, items in itertools.islice(passes, count):
        for item in items:
            yield LoggedClick(session_id, item, 0.0)


async def fill(settings: Settings, clicks: Iterator[LoggedClick]) -> int:
    """Send `clicks` to the clicks topic as fast as the broker takes them; how many."""
    producer = kafka_producer(settings, linger_ms=20)
    await producer.start()
    sent = 0
    try:
        while chunk := list(itertools.islice(clicks, FILL_CHUNK)):
            await send_clicks(producer, settings.clicks_topic, chunk, None, lambda *_: None)
            sent += len(chunk)
    finally:
        await producer.stop()
    return sent


async def commit_at_end(settings: Settings) -> None:
    """Commit the worker's group at the clicks topic's end: it serves only what is sent after. The end is checked
    by a fetch: the embedded broker lists one short of its last batch (`stream_app.partition_ends`)."""
    consumer = AIOKafkaConsumer(group_id=settings.app_id, enable_auto_commit=False,
                                **aiokafka_client_kwargs(settings))
    await consumer.start()
    try:
        partitions = [TopicPartition(settings.clicks_topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        fetched = settings.model_copy(update={"broker_end_offsets": "fetch"})
        await consumer.commit(await checked_ends(fetched, await consumer.end_offsets(partitions)))
    finally:
        await consumer.stop()


def blend_artifact(artifact: Path, folder: Path, weight: float) -> Path:
    """A copy of `artifact` that records the blend of its GRU4Rec and V-SKNN (the worker's k and sample size)."""
    version = json.loads((artifact / MANIFEST).read_text())["version"]
    blend = renamed(artifact, folder, f"{version}-blend")
    edit_manifest(blend, serving_pipeline=ServingPipeline("blend", "gru4rec", weight).to_dict())
    return blend


async def index_load(worker: WorkerProcess, started: float) -> str:
    """Poll the worker while it reads its index: seconds from its start to `knn_index_loaded`, and its resident
    memory grown per session from the first sample at half the index or more to the loaded index."""
    samples: list[tuple[float, int]] = []  # (sessions indexed, RSS)
    while not (await asyncio.to_thread(worker.readiness)).get("knn_index_loaded"):
        worker.check_alive()
        samples.append(await asyncio.to_thread(indexed_and_rss, worker))
        await asyncio.sleep(0.25)
    seconds = time.monotonic() - started
    loaded, rss = await asyncio.to_thread(indexed_and_rss, worker)
    half, rss_half = next(((n, r) for n, r in samples if n >= loaded / 2), (loaded, rss))
    growth = (f"; RSS +{(rss - rss_half) / (loaded - half):,.0f} B per session from {half:,.0f} to {loaded:,.0f}"
              if loaded > half else "")
    return f"{loaded:,.0f} sessions indexed, knn_index_loaded {seconds:.1f} s after the start{growth}"


def indexed_and_rss(worker: WorkerProcess) -> tuple[float, int]:
    try:
        indexed = sum(value for _, value in worker.metric_samples("nextclick_knn_sessions"))
    except OSError:  # the web server is not up yet
        indexed = 0.0
    return indexed, rss_bytes(worker.process.pid)


async def serve(fields: dict, clicks: list[LoggedClick], log: Path) -> tuple[Served, str]:
    """Commit the worker's group at the end, append `clicks`, start the worker and time it serving them."""
    worker = WorkerProcess(fields, log)
    await create_topics(worker.settings, worker.settings.recommendations_topic)  # read from before the first one
    await commit_at_end(worker.settings)
    loading: list[asyncio.Task] = []

    def start() -> None:
        worker.start()
        loading.append(asyncio.create_task(index_load(worker, time.monotonic())))

    try:
        served, stats = await serve_backlog(worker.settings, clicks, start, lambda: worker.process.pid,
                                            worker.check_alive)
        if stats.received > len(clicks):
            raise RuntimeError(f"{stats.received} suggestions for {len(clicks)} clicks: the worker served the fill")
        return served, await loading[0]
    finally:
        worker.stop()


async def measure(args: argparse.Namespace, broker: EmbeddedBroker, tmp: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    serving = DEFAULT_TUNING | {"consumer_fetch_max_wait": KAFKA_LIKE_FETCH_WAIT, "knn_sessions": args.index_sessions}
    shared = run_fields(broker, args.artifact, f"knn-{tag}") | serving
    settings = Settings(**shared)
    await create_topics(settings, settings.clicks_topic)
    sessions = training_sessions(args.artifact)
    started = time.monotonic()
    sent = await fill(settings, fill_clicks(sessions, args.index_sessions))
    seconds = time.monotonic() - started
    print(f"fill: {args.index_sessions:,} sessions, {sent:,} clicks in {seconds:.0f} s ({sent / seconds:,.0f}"
          f" clicks/s); broker RSS {rss_bytes(broker.pid) / 2**30:.2f} GiB", flush=True)

    blend = blend_artifact(args.artifact, tmp / "blend", args.blend_weight)
    test = interleaved(test_sessions(args.artifact, settings)[1], args.sessions)
    for pipeline in args.pipelines:
        serving_model = SERVING_MODELS[pipeline]
        run = f"{pipeline}-{tag}"
        clicks = take(test, args.clicks, run)
        bare_fields = run_fields(broker, args.artifact, f"bare-{run}") | serving | {"serving_model": "gru4rec"}
        bare = await bare_loop_run(bare_fields, args.artifact, clicks, tmp / f"bare-{run}.log")
        fields = run_fields(broker, blend if pipeline == "blend" else args.artifact, run) | serving | {
            "clicks_topic": settings.clicks_topic, "serving_model": serving_model}
        served, load = await serve(fields, clicks, tmp / f"worker-{run}.log")
        print(f"{pipeline}: {load}; worker {served.clicks_per_s:,.0f} clicks/s ({served.cpu_us_per_click:.0f} µs"
              f" CPU/click); bare loop {bare.clicks_per_s:,.0f} clicks/s; worker / bare loop"
              f" {served.clicks_per_s / bare.clicks_per_s:.2f}", flush=True)


def main() -> None:
    unwind_on_sigterm()
    args = parse_args()
    print(machine_line(f"index {args.index_sessions:,} sessions, {args.clicks:,} test clicks per pipeline"))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        asyncio.run(measure(args, broker, Path(tmp)))


if __name__ == "__main__":
    main()
