"""Catalogue benchmark (issue 37): the item table's memory, propagation to every worker, the rules' cost, flips.

    PYTHONPATH=. python bench/catalogue.py --artifact DIR [--items 1000000] [--records 200] [--clicks 20000]
        [--repeat 2] [--flip-clicks 100000] [--flip-rate 1000]

The catalogue's item ids are Diginetica's real ones (`diginetica/product-categories.csv.gz`: 184,047 items with
their real categories); beyond them, up to `--items`, each real id gets variants `ID~1`, `ID~2`, ... (sizes and
colours of one product, a synthetic stand-in: no public log has a million item ids), with the product's category.
Availability is synthetic: a tenth of the items unavailable. Prints:

(a) the item table at `--items` items next to the artifact's model (its vocabulary in arrays, the rest in the
    dict): bytes per item of RSS growth, in a fresh process, and the time to parse and apply every record (what a
    restarted worker spends on the catalogue, broker aside);
(b) propagation: two workers of one group on the embedded broker, `--records` records sent 50 ms apart; per worker
    p50 / p99 of nextclick_catalogue_propagation_seconds (record timestamp -> applied), interpolated in its buckets;
(c) throughput with and without the rules, alternating `--repeat` times, the same artifact and clicks: a backlog of
    `--clicks` Diginetica test clicks served by a worker with NEXTCLICK_CATALOGUE_RULES on (the artifact's items in
    the catalogue with their categories, a tenth unavailable) and by one with it off;
    and, in this process without a broker, the serving path alone (`SessionRecommender.recommend` on batches of
    `batch_size` test clicks) with and without the catalogue view, alternating, best of `--repeat` x 5 rounds;
(d) `--flip-clicks` clicks at `--flip-rate` while a tenth of the artifact's items flips every second
    (`devtools.catalogue_flips`): clicks answered, suggestions short of top_k, the longest an unavailable item
    stayed in suggestions.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import multiprocessing
import os
import random
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.stream_throughput import (
    DEFAULT_TUNING,
    KAFKA_LIKE_FETCH_WAIT,
    cpu_seconds,
    create_topics,
    histogram_quantiles,
    interleaved,
    rss_bytes,
    run_fields,
    serve_backlog,
    take,
    test_sessions,
)
from devtools.catalogue_flips import catalogue_record, flips_under_load
from devtools.click_replay import WorkerProcess, kafka_producer
from devtools.embedded_broker import EmbeddedBroker, free_port
from devtools.machine import machine_line
from devtools.stopping import unwind_on_sigterm
from stream_app.inference.catalogue import Catalogue
from stream_app.inference.catalogue_records import parse_item_record
from stream_app.inference.events import Click
from stream_app.inference.scoring import Scorer
from stream_app.inference.sessions import SessionRecommender
from stream_app.inference.suggestion import SourcedClick
from stream_app.settings import Settings, get_settings

UNAVAILABLE_SHARE = 0.1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True, help="the served artifact (GRU4Rec on Diginetica)")
    parser.add_argument("--items", type=int, default=1_000_000, help="catalogue size of the memory run")
    parser.add_argument("--records", type=int, default=200, help="records of the propagation run")
    parser.add_argument("--clicks", type=int, default=20_000, help="clicks per throughput run")
    parser.add_argument("--repeat", type=int, default=2,
                        help="throughput runs with and without rules, alternating (0: none, nor the serving path's)")
    parser.add_argument("--flip-clicks", type=int, default=100_000, help="clicks of the flip run (0: none)")
    parser.add_argument("--flip-rate", type=float, default=1_000.0, help="clicks/s of the flip run")
    return parser.parse_args()


def real_categories(settings: Settings) -> list[tuple[str, str]]:
    """Diginetica's (item id, category id) pairs."""
    with gzip.open(settings.data_dir / "diginetica" / "product-categories.csv.gz", "rt") as lines:
        return [(row["itemId"], row["categoryId"]) for row in csv.DictReader(lines, delimiter=";")]


def catalogue_items(settings: Settings, count: int) -> list[tuple[str, str]]:
    """`count` (item id, category): the real items, then their variants (module docstring)."""
    real = real_categories(settings)
    items = list(real)
    variant = 1
    while len(items) < count:
        items += [(f"{item}~{variant}", category) for item, category in real[: count - len(items)]]
        variant += 1
    return items[:count]


def records_of(items: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    rng = random.Random(37)
    return [(item.encode(), catalogue_record(rng.random() >= UNAVAILABLE_SHARE, category=category))
            for item, category in items]


def table_memory(artifact: Path, items: list[tuple[str, str]]) -> tuple[float, float, int, int]:
    """(RSS bytes per item, seconds to parse and apply all, items in the model's arrays, items waiting in the dict)
    of a catalogue of `items` beside the artifact's model; run in a fresh process."""
    scorer = Scorer(artifact)
    records = records_of(items)
    catalogue = Catalogue()
    catalogue.view(scorer)
    before = rss_bytes(os.getpid())
    started = time.perf_counter()
    for key, value in records:
        catalogue.apply(*parse_item_record(key, value, max_bytes=4096))
    seconds = time.perf_counter() - started
    grown = rss_bytes(os.getpid()) - before
    known = sum(scorer.index_of(item) is not None for item, _ in items)
    return grown / len(items), seconds, known, catalogue.items - known


def memory_run(args: argparse.Namespace, settings: Settings) -> None:
    items = catalogue_items(settings, args.items)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        per_item, seconds, known, waiting = fresh.submit(table_memory, args.artifact, items).result()
    print(f"(a) item table of {len(items):,} items ({known:,} in the model's arrays, {waiting:,} in the dict):"
          f" RSS {per_item:.1f} B per item (the ids the dict keeps included);"
          f" parsed and applied in {seconds:.2f} s ({len(items) / seconds:,.0f} records/s);"
          f" arrays alone: 5 B per model item (uint8 flags + int32 category)", flush=True)


async def send_records(settings: Settings, records: list[tuple[bytes, bytes]], spacing: float = 0.0) -> None:
    producer = kafka_producer(settings, linger_ms=0 if spacing else 20)
    await producer.start()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(settings.catalogue_topic, value, key=key))
            if spacing:
                await asyncio.sleep(spacing)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def propagation_buckets(worker: WorkerProcess) -> dict[str, float]:
    return {labels["le"]: value
            for labels, value in worker.metric_samples("nextclick_catalogue_propagation_seconds_bucket")}


def propagation_run(args: argparse.Namespace, broker: EmbeddedBroker, tmp: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    fields = run_fields(broker, args.artifact, f"prop-{tag}") | {"catalogue_topic": f"catalogue-{tag}"}
    workers = [WorkerProcess(fields | {"web_port": free_port()}, tmp / f"prop-{n}.log").start() for n in range(2)]
    try:
        for worker in workers:
            worker.wait_ready(timeout=120)
        settings = workers[0].settings
        before = [propagation_buckets(worker) for worker in workers]
        flipped = enumerate(Scorer(args.artifact).item_ids[: args.records])
        records = [(item.encode(), catalogue_record(n % 2 == 0)) for n, item in flipped]
        asyncio.run(send_records(settings, records, spacing=0.05))
        time.sleep(2.0)
        for number, (worker, earlier) in enumerate(zip(workers, before, strict=True)):
            after = propagation_buckets(worker)
            p50, p99 = histogram_quantiles(earlier, after, 0.5, 0.99)
            count = after["+Inf"] - earlier.get("+Inf", 0.0)
            print(f"(b) worker {number + 1}: {count:.0f} of {len(records)} records applied; record -> applied"
                  f" p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms", flush=True)
    finally:
        for worker in workers:
            worker.stop()


def throughput_run(args: argparse.Namespace, broker: EmbeddedBroker, tmp: Path, clicks, rules: bool,
                   catalogue: list[tuple[bytes, bytes]]) -> tuple[float, float]:
    tag = uuid.uuid4().hex[:6]
    fields = run_fields(broker, args.artifact, f"rules-{tag}") | DEFAULT_TUNING | {
        "consumer_fetch_max_wait": KAFKA_LIKE_FETCH_WAIT, "catalogue_topic": f"catalogue-{tag}",
        "catalogue_rules": rules}
    worker = WorkerProcess(fields, tmp / f"rules-{tag}.log")
    settings = worker.settings
    try:
        asyncio.run(create_topics(settings, settings.clicks_topic, settings.recommendations_topic))
        asyncio.run(send_records(settings, catalogue))

        def start() -> None:
            worker.start()

        served, _ = asyncio.run(serve_backlog(settings, take(clicks, args.clicks, tag), start,
                                              lambda: worker.process.pid, worker.check_alive))
        return served.clicks_per_s, served.cpu_us_per_click
    finally:
        worker.stop()


def serving_path_cost(args: argparse.Namespace, settings: Settings, clicks, records: list[tuple[bytes, bytes]]) -> None:
    """The rules' CPU per click in `SessionRecommender.recommend` alone (module docstring, (c))."""
    scorer = Scorer(args.artifact, settings.inference_threads)
    catalogue = Catalogue()
    view = catalogue.view(scorer)
    for key, value in records:
        catalogue.apply(*parse_item_record(key, value, max_bytes=4096))
    batches = [[SourcedClick(Click(c.session_id, c.item_id, 1.0), 0, n * settings.batch_size + i)
                for i, c in enumerate(take(clicks, settings.batch_size))] for n in range(20)]
    best: dict[bool, float] = {}
    for _ in range(5 * args.repeat):
        for rules in (True, False):
            engine = SessionRecommender.from_settings(scorer, settings, catalogue=view if rules else None)
            table: dict = {}
            started = time.process_time()
            for batch in batches:
                table.update(engine.recommend(batch, table, now=1.0).states)
            best[rules] = min(best.get(rules, float("inf")), time.process_time() - started)
    count = sum(map(len, batches))
    on, off = (1e6 * best[rules] / count for rules in (True, False))
    print(f"(c) serving path alone ({count:,} clicks in batches of {settings.batch_size}, best of {5 * args.repeat}):"
          f" rules on {on:.1f} µs CPU per click, off {off:.1f} µs: cost {on / off - 1:+.1%}", flush=True)


def flip_run(args: argparse.Namespace, broker: EmbeddedBroker, tmp: Path, clicks) -> None:
    tag = uuid.uuid4().hex[:6]
    fields = run_fields(broker, args.artifact, f"flip-{tag}") | {"catalogue_topic": f"catalogue-{tag}"}
    scorer = Scorer(args.artifact)
    with WorkerProcess(fields, tmp / "flip.log") as worker:
        worker.wait_ready(timeout=120)
        cpu = cpu_seconds(worker.process.pid)
        log, verdict, sent = asyncio.run(flips_under_load(
            worker.settings, take(clicks, args.flip_clicks, tag), args.flip_rate, UNAVAILABLE_SHARE, scorer.item_ids))
        cpu = cpu_seconds(worker.process.pid) - cpu
    late = sorted(verdict.lateness)
    print(f"(d) {sent:,} clicks at {args.flip_rate:,.0f}/s, {log.records:,} flips ({UNAVAILABLE_SHARE:.0%} of"
          f" {len(scorer.item_ids):,} items a second): {len(verdict.answered):,} answered,"
          f" {verdict.suggestions:,} suggestions, {verdict.short} short of top_k; {len(late)} held an item"
          f" that was unavailable at that moment, longest {max(late, default=0.0) * 1000:.0f} ms"
          f" (p99 of those {late[int(0.99 * (len(late) - 1))] * 1000 if late else 0.0:.0f} ms); worker CPU"
          f" {cpu:.1f} s", flush=True)


def main() -> None:
    unwind_on_sigterm()
    args = parse_args()
    settings = get_settings()
    scorer = Scorer(args.artifact)
    print(machine_line())
    print(f"model: {scorer.name} artifact {scorer.version} ({args.artifact.name}), hidden {scorer.hidden_size},"
          f" {len(scorer.item_ids):,} items, graph top {scorer.graph_top_k}, served top_k {settings.top_k}")
    memory_run(args, settings)
    dataset, sessions = test_sessions(args.artifact, settings)
    clicks = interleaved(sessions, 2_000)
    categories = dict(real_categories(settings))
    model_catalogue = records_of([(item, categories.get(item, "none")) for item in scorer.item_ids])
    if args.repeat > 0:
        serving_path_cost(args, settings, clicks, model_catalogue)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        propagation_run(args, broker, Path(tmp))
        for repetition in range(args.repeat):
            results = {}
            for rules in (True, False) if repetition % 2 == 0 else (False, True):
                results[rules] = throughput_run(args, broker, Path(tmp), clicks, rules, model_catalogue)
            (on, on_cpu), (off, off_cpu) = results[True], results[False]
            print(f"(c) run {repetition + 1} ({dataset} clicks): rules on {on:,.0f} clicks/s ({on_cpu:.0f} µs CPU"
                  f" per click), off {off:,.0f} ({off_cpu:.0f} µs): cost {1 - on / off:+.1%} in clicks/s,"
                  f" {on_cpu / off_cpu - 1:+.1%} in CPU per click", flush=True)
        if args.flip_clicks > 0:
            flip_run(args, broker, Path(tmp), clicks)


if __name__ == "__main__":
    main()
