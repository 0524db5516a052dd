"""Big catalogues: a real GRU4Rec's catalogue grown to 250 k and 1 M items, served exactly and through its item index.

    PYTHONPATH=. python bench/big_catalogue.py --artifact DIR [--sizes 43097 250000 1000000] [--sessions 4000]
        [--worker-clicks 20000] [--modes exact ann] [--providers cuda cpu]

The artifact is a GRU4Rec (trained on Diginetica for the figures in BENCHMARKS.md; the sessions are its data set's test
sessions); `--sizes` at its own item count measures its real catalogue as it is. For each size, its checkpoint's item
table grows by synthetic items drawn like the real item vectors (`bench/ann_libraries.py`'s `grown_vectors`; they are
never clicked, popularity 0) and is exported as a training export would (`training.retriever_files`: graph, query
graph, index). For exact scoring and for the index (NEXTCLICK_TOPK_INDEX, `--modes`), on each onnxruntime provider of
`--providers` (NEXTCLICK_INFERENCE_PROVIDER), each in a fresh process: the time to load the artifact, the RSS after
loading and serving, clicks/s of onnxruntime and the top K alone (`bench/stream_throughput.py`'s `onnxruntime_alone`,
batch 256), and served Recall@20 through the worker's recommender on the first `--sessions` real test sessions (keeping
clicked items). With `--worker-clicks`, the worker's clicks/s on the embedded broker (`bench/stream_throughput.py`'s
machinery; both settings passed to the worker, which reports the provider it got). On a GPU machine
(`scripts/gpu_check.sh serving`), `--providers cuda cpu` gives clicks/s per GPU (one process on one GPU) against the
same machine's CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import os
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import get_args

import numpy as np
import onnxruntime
import torch

from bench.ann_libraries import grown_vectors, item_vectors
from bench.stream_throughput import (
    DEFAULT_TUNING,
    KAFKA_LIKE_FETCH_WAIT,
    create_topics,
    interleaved,
    onnxruntime_alone,
    rss_bytes,
    run_fields,
    serve_backlog,
    take,
    test_sessions,
)
from devtools.click_replay import WorkerProcess
from devtools.embedded_broker import EmbeddedBroker
from devtools.machine import machine_line
from devtools.stopping import unwind_on_sigterm
from models.checkpoint import load_checkpoint
from stream_app.inference.artifact_format import MANIFEST
from stream_app.inference.scoring import Scorer
from stream_app.inference.served_quality import served_top_k_metrics
from stream_app.settings import Settings, get_settings
from training.artifact import write_artifact_metadata
from training.retriever_files import export_retriever

MODES = ("exact", "ann")
PROVIDERS = get_args(Settings.model_fields["inference_provider"].annotation)


def grown_artifact(source: Path, n_items: int, out: Path) -> Path:
    """`source`'s GRU4Rec with its item table grown to `n_items` (synthetic items `synthetic-N`), as an artifact."""
    model = load_checkpoint(source / "gru4rec.pt").model
    vectors = grown_vectors(item_vectors(source), n_items)
    hidden = model.hidden_size
    grown = type(model)(dataclasses.replace(model.config, n_items=n_items))
    state = model.state_dict() | {"output_weights": torch.from_numpy(vectors[:, :hidden].copy()),
                                  "output_bias": torch.from_numpy(vectors[:, hidden:].copy())}
    grown.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((source / MANIFEST).read_text())
    entry = {key: value for key, value in manifest["models"]["gru4rec"].items() if key not in ("query_file", "index")}
    started = time.perf_counter()
    entry |= export_retriever("gru4rec", grown.eval(), out / entry["file"], entry["top_k"]) | {"n_items": n_items}
    entry.pop("weights", None)
    print(f"  exported {n_items:,} items (graph, query graph, index) in {time.perf_counter() - started:.1f} s",
          flush=True)
    real_ids = json.loads((source / "item_ids.json").read_text())
    ids = np.array(real_ids + [f"synthetic-{n}" for n in range(n_items - len(real_ids))])
    popularity = np.concatenate([np.load(source / "popularity.npy"), np.zeros(n_items - len(real_ids), np.int64)])
    metrics = {"dataset": json.loads((source / "metrics.json").read_text())["dataset"]}
    write_artifact_metadata(out, version=f"grown-{n_items}", trained_by="bench", item_ids=ids, popularity=popularity,
                            config={}, metrics=metrics, models={"gru4rec": entry})
    return out


def measured(artifact: Path, mode: str, provider: str, sessions: int) -> dict:
    """Load, clicks/s alone, served Recall@20 and RSS of one mode on one provider; run in a fresh process."""
    settings = get_settings()
    started = time.perf_counter()
    scorer = Scorer(artifact, settings.inference_threads, "gru4rec", mode, provider=provider)
    loaded = time.perf_counter() - started
    _, test = test_sessions(artifact, settings)
    rate = onnxruntime_alone(scorer, settings, [scorer.known_indices(items) for items in test[:2000]])
    served = served_top_k_metrics(scorer, test[:sessions], settings, exclude_seen=False)
    return {"load_s": loaded, "clicks_per_s": rate, "recall@20": served.recall, "predictions": served.predictions,
            "rss_mib": rss_bytes(os.getpid()) / 2**20, "provider": scorer.provider}


async def worker_rate(broker: EmbeddedBroker, artifact: Path, mode: str, provider: str, clicks: list) -> float:
    tag = uuid.uuid4().hex[:6]
    fields = run_fields(broker, artifact, f"big-{tag}") | DEFAULT_TUNING | {
        "topk_index": mode, "inference_provider": provider, "consumer_fetch_max_wait": KAFKA_LIKE_FETCH_WAIT}
    with tempfile.TemporaryDirectory() as tmp:
        worker = WorkerProcess(fields, Path(tmp) / "worker.log")
        try:
            await create_topics(worker.settings, worker.settings.clicks_topic, worker.settings.recommendations_topic)
            served, _ = await serve_backlog(worker.settings, [dataclasses.replace(c, session_id=c.session_id + tag)
                                                              for c in clicks],
                                            worker.start, lambda: worker.process.pid, worker.check_alive)
            rss = rss_bytes(worker.process.pid) / 2**20
            [got] = {labels["provider"] for labels, _ in worker.metric_samples("nextclick_model_info")}
        finally:
            worker.stop()
    timed = (len(clicks) - 1) / served.clicks_per_s  # a backlog answered in one burst is not a rate: more clicks
    print(f"    worker ({mode} on {got}): {served.clicks_per_s:,.0f} clicks/s over {timed:.2f} s,"
          f" {served.cpu_us_per_click:.0f} µs CPU per click, RSS {rss:.0f} MiB", flush=True)
    return served.clicks_per_s


def main() -> None:
    unwind_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[43_097, 250_000, 1_000_000])
    parser.add_argument("--sessions", type=int, default=4_000, help="test sessions of the served Recall@20")
    parser.add_argument("--worker-clicks", type=int, default=0, help="clicks of each worker run (0: none)")
    parser.add_argument("--out", type=Path, help="where the grown artifacts go (default: a temporary folder)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="NEXTCLICK_TOPK_INDEX values")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=[get_settings().inference_provider],
                        help="NEXTCLICK_INFERENCE_PROVIDER values (default: the setting's)")
    args = parser.parse_args()
    print(machine_line(f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"))
    dataset = json.loads((args.artifact / "metrics.json").read_text())["dataset"]
    print(f"Recall@20 on the first {args.sessions} test sessions of {dataset}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for n_items in args.sizes:
            print(f"{n_items:,} items", flush=True)
            artifact = grown_artifact(args.artifact, n_items, root / f"grown-{n_items}")
            runs = [(provider, mode) for provider in args.providers for mode in args.modes]
            for provider, mode in runs:
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
                    m = fresh.submit(measured, artifact, mode, provider, args.sessions).result()
                print(f"    {mode} on {m['provider']}: load {m['load_s']:.1f} s, onnxruntime + top K alone"
                      f" {m['clicks_per_s']:,.0f} clicks/s, served Recall@20 {m['recall@20']:.4f}"
                      f" ({m['predictions']:,} predictions), RSS {m['rss_mib']:.0f} MiB", flush=True)
            if args.worker_clicks:
                _, sessions = test_sessions(artifact, get_settings())
                clicks = take(interleaved(sessions, 2_000), args.worker_clicks)
                with EmbeddedBroker() as broker:
                    for provider, mode in runs:
                        asyncio.run(worker_rate(broker, artifact, mode, provider, clicks))


if __name__ == "__main__":
    main()
