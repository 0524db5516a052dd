"""DIEN re-ranking cost in serving: one onnxruntime call scoring N candidates for each of B sessions.

    python bench/dien_scoring.py                         # 64 sessions x 100 candidates, Diginetica catalogue
    python bench/dien_scoring.py --artifact DIR          # the dien.onnx of a trained artifact instead

Histories are real: the first test prefixes of the data set (last L clicks, padded to L as the graph
wants); candidates are the catalogue's most popular items. Without --artifact the graph is a freshly
exported DIEN of the default size over the data set's catalogue: its weights do not change its cost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from train_speed import cpu_name  # the sibling bench script

from models.dien import DIEN
from models.export import export_dien
from training.data.click_log import EncodedSplit
from training.data.datasets import dataset_names, load_dataset
from training.data.prefixes import Prefixes
from training.trainers.dien import DIENTraining


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=dataset_names(), default="diginetica_srgnn")
    parser.add_argument("--artifact", type=Path, help="an artifact directory holding dien.onnx")
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    split = EncodedSplit.of(*load_dataset(args.dataset))
    with tempfile.TemporaryDirectory() as scratch:
        if args.artifact:
            path = args.artifact / "dien.onnx"
            max_len = json.loads((args.artifact / "manifest.json").read_text())["models"]["dien"]["max_len"]
        else:
            params = DIENTraining()
            max_len = params.max_len
            path = export_dien(DIEN(params.model_config(len(split.popularity))), Path(scratch) / "dien.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

        batch = Prefixes.of(split.test, max_len).batch(np.arange(args.sessions))
        items = np.zeros((args.sessions, max_len), dtype=np.int64)
        items[:, : batch.items.shape[1]] = batch.items.numpy()
        popular = np.argsort(-split.popularity, kind="stable")[: args.candidates]
        feed = {"items": items, "lengths": batch.lengths.numpy(),
                "candidates": np.tile(popular, (args.sessions, 1)).astype(np.int64)}
        for _ in range(10):
            session.run(None, feed)
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            session.run(None, feed)
            seconds.append(time.perf_counter() - started)
    ms = np.array(seconds) * 1000
    print(f"machine: {cpu_name()}; onnxruntime {ort.__version__}, intra-op threads {args.threads or 'default'}; "
          f"torch {torch.__version__} (export only)")
    print(f"DIEN {'from ' + str(args.artifact) if args.artifact else 'default size, untrained'}: "
          f"{args.sessions} sessions x {args.candidates} candidates, L = {max_len}, {args.repeats} calls")
    print(f"per batch: median {np.median(ms):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms, min {ms.min():.2f} ms; "
          f"{args.sessions * args.candidates / np.median(ms) * 1000:,.0f} candidate scores/s")


if __name__ == "__main__":
    main()
