"""Training speed of GRU4Rec in events/s and seconds per epoch, at the official Diginetica settings.

    python bench/train_speed.py                                   # 1 epoch of Diginetica (SR-GNN split)
    python bench/train_speed.py --epochs 10 --evaluate            # the full run, with Recall/MRR@20

Run it on an otherwise idle machine: torch's threads stall badly when another process takes a core.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from training.data.click_log import EncodedSplit
from training.data.datasets import dataset_names, load_dataset
from training.evaluation.evaluate import evaluate, format_table
from training.retrain import training_params
from training.trainers.gru4rec import train_gru4rec

REPO = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=dataset_names(), default="diginetica_srgnn")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "gru4rec_diginetica.toml")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--evaluate", action="store_true", help="also report Recall/MRR on the test split")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_log, test_log = load_dataset(args.dataset)
    split = EncodedSplit.of(train_log, test_log)
    train, popularity = split.train, split.popularity
    params = training_params("gru4rec", args.config, n_epochs=args.epochs)
    started = time.perf_counter()
    model, history = train_gru4rec(train, popularity, params, progress=False)
    total = time.perf_counter() - started

    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"data: {args.dataset}, {train.n_clicks - train.n_sessions:,} training events per epoch, "
          f"{len(split.item_map):,} items; settings: {args.config.name}, {history.matmul_precision} matmuls")
    for epoch in history.epochs:
        print(f"epoch {epoch.epoch}: {epoch.events_per_second:,.0f} events/s, {epoch.seconds:.1f} s, "
              f"loss {epoch.loss:.4f}")
    events = sum(e.events for e in history.epochs)
    print(f"overall: {events / total:,.0f} events/s, {total / len(history.epochs):.1f} s per epoch")
    if args.evaluate:
        print(format_table(list(evaluate(model, popularity, split.test, name="gru4rec"))))


if __name__ == "__main__":
    main()
