"""What the `vsknn` pipeline costs a worker: clicks/s served with a full session index, the index's bytes per
session, and how fast clicks are indexed.

    PYTHONPATH=. python bench/knn_serving.py --dataset diginetica_srgnn

(a) Fill: every session of the training split, click by click, into a `LiveNeighbours` of `--sessions` capacity
(`stream_app.inference.live_knn`, what `stream_app.worker.clicks_reader` does per click once a record is parsed);
clicks/s, and the process's resident memory grown per indexed session (index and item vocabulary together).
(b) Serve: the test split's clicks, sessions overlapping in time (session s starts at time s and clicks every 3
units), in micro-batches of `NEXTCLICK_BATCH_SIZE` through the worker's `SessionRecommender` with the `vsknn`
scorer, each click indexed first, as the worker does; clicks/s and µs per click, on one thread (the worker's
event loop). The Kafka side of a worker is not in it: bench/stream_throughput.py measures that.
Real sessions only: an index larger than the data set's sessions is reported at the sessions there are.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np

from stream_app.inference.events import Click
from stream_app.inference.live_knn import LiveNeighbours
from stream_app.inference.session_knn import VSKNNParams
from stream_app.inference.sessions import SessionRecommender
from stream_app.inference.suggestion import SourcedClick
from stream_app.settings import Settings
from training.data.click_log import ClickLog
from training.data.datasets import dataset_names, load_dataset


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def overlapping(log: ClickLog, prefix: str) -> list[tuple[str, str]]:
    """(session id, item id) of every click, sessions overlapping in time as a live stream's do."""
    offsets = log.session_offsets()
    clicks = [(s + 3 * t, s, str(log.item_ids[offsets[s] + t]))
              for s in range(len(offsets) - 1) for t in range(offsets[s + 1] - offsets[s])]
    return [(f"{prefix}{s}", item) for _, s, item in sorted(clicks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=dataset_names(), default="diginetica_srgnn")
    parser.add_argument("--sessions", type=int, default=Settings.model_fields["knn_sessions"].default,
                        help="the index's capacity (NEXTCLICK_KNN_SESSIONS)")
    parser.add_argument("--clicks", type=int, default=20_000, help="test clicks served")
    args = parser.parse_args()
    settings = Settings(serving_model="vsknn", catalogue_rules=False)

    train, test = load_dataset(args.dataset)
    item_ids, counts = np.unique(train.item_ids.astype(str), return_counts=True)
    artifact = SimpleNamespace(item_ids=item_ids.tolist(), popularity=counts.astype(np.float32), version="bench",
                               graph_top_k=100)  # what the pipeline reads of an artifact: its popular items
    neighbours = LiveNeighbours(args.sessions, VSKNNParams(k=settings.knn_neighbours,
                                                           sample_size=settings.knn_sample_size))
    fill = [(f"t{s}", str(item)) for s, item in zip(np.repeat(np.arange(train.n_sessions),
                                                              np.diff(train.session_offsets())),
                                                     train.item_ids, strict=True)]
    before = resident_bytes()
    started = time.perf_counter()
    for session_id, item_id in fill:
        neighbours.observe(session_id, item_id)
    fill_seconds = time.perf_counter() - started
    grown = resident_bytes() - before
    indexed = neighbours.index.n_sessions

    recommender = SessionRecommender(neighbours.scorer(artifact, settings.max_history), top_k=settings.top_k,
                                     max_history=settings.max_history, session_ttl=float("inf"),
                                     exclude_seen=False)
    served = overlapping(test, "q")[: args.clicks]
    table: dict = {}
    started = time.perf_counter()
    for start in range(0, len(served), settings.batch_size):
        batch = [SourcedClick(Click(session_id, item_id, 0.0), 0, start + n)
                 for n, (session_id, item_id) in enumerate(served[start:start + settings.batch_size])]
        for sourced in batch:
            neighbours.observe(sourced.click.session_id, sourced.click.item_id)
        table.update(recommender.recommend(batch, table, now=0.0).states)
    serve_seconds = time.perf_counter() - started

    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs visible; {args.dataset}")
    print(f"index: capacity {args.sessions:,}, {indexed:,} sessions indexed ({train.n_sessions:,} training sessions"
          f"{'; the data set has fewer sessions than the capacity' if train.n_sessions < args.sessions else ''}), "
          f"{len(neighbours.vocabulary.ids):,} items")
    print(f"fill: {len(fill):,} clicks in {fill_seconds:.1f} s, {len(fill) / fill_seconds:,.0f} clicks/s; "
          f"resident memory +{grown / 2**20:.1f} MiB, {grown / indexed:,.0f} B per indexed session")
    print(f"serve (V-SKNN k={settings.knn_neighbours}, sample {settings.knn_sample_size}, batches of "
          f"{settings.batch_size}): {len(served):,} clicks in {serve_seconds:.1f} s, "
          f"{len(served) / serve_seconds:,.0f} clicks/s, {1e6 * serve_seconds / len(served):,.0f} µs per click")


if __name__ == "__main__":
    main()
