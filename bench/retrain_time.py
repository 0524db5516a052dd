"""Wall time of a full `python -m training.retrain`: seconds per epoch of every model, and the whole run.

    python bench/retrain_time.py                                   # Diginetica (SR-GNN split), all three models
    python bench/retrain_time.py -- --dataset yoochoose_rsc15_100k --epochs 1     # any retrain flags after --
    python bench/retrain_time.py -- --dataset diginetica_srgnn --config configs/diginetica.toml --device cuda

Run it on an otherwise idle machine: torch's threads stall badly when another process takes a core.
The artifact goes to a temporary directory (or `--keep DIR`) and is not pushed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from train_speed import REPO, cpu_name  # the sibling bench script

from training.retrain import main as retrain

DEFAULT_FLAGS = ["--dataset", "diginetica_srgnn", "--config", str(REPO / "configs" / "diginetica.toml")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("retrain_flags", nargs="*", help=f"flags for training.retrain (default: {DEFAULT_FLAGS})")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="write the artifact here and keep it")
    args = parser.parse_args()
    flags = args.retrain_flags or DEFAULT_FLAGS
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        out = retrain([*flags, "--out", str(args.keep or Path(scratch) / "artifact"), "--no-progress"])
        total = time.perf_counter() - started
        metrics = json.loads((out / "metrics.json").read_text())
    device = metrics["training"].get("device", "cpu")
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    print(f"\nmachine: {cpu_name()}, {torch.get_num_threads()} torch threads{gpu}, torch {torch.__version__}, "
          f"{metrics['training']['lanes']} lane(s), device {device}")
    print(f"command: python -m training.retrain {' '.join(flags).replace(f'{REPO}/', '')}")
    for model, record in metrics["training"].items():
        if not isinstance(record, dict):  # the run's threads, lanes and device
            continue
        seconds = [e["seconds"] for e in record["epochs"]]
        events = sum(e["events"] for e in record["epochs"])
        print(f"{model}: {len(seconds)} epochs, {sum(seconds):,.0f} s training, "
              f"{sum(seconds) / len(seconds):,.1f} s per epoch ({', '.join(f'{s:.0f}' for s in seconds)}), "
              f"{events / sum(seconds):,.0f} training events/s")
    print("stages: " + ", ".join(f"{s['name']} {s['seconds']:,.0f} s" for s in metrics["stages"]))
    print(f"whole run (loading, training, retrieval, evaluation, export): {total:,.0f} s = {total / 60:.1f} min")
    print("quality: " + ", ".join(f"{name} Recall@20 {r['recall@20']:.4f} MRR@20 {r['mrr@20']:.4f}"
                                  for name, r in metrics["results"].items()))


if __name__ == "__main__":
    sys.exit(main())
