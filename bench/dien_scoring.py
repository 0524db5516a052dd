"""DIEN re-ranking cost in serving: one onnxruntime call scoring N candidates for each of B sessions.

    python bench/dien_scoring.py                         # 64 sessions x 100 candidates, Diginetica catalogue
    python bench/dien_scoring.py --seed 1                # another draw of sessions
    python bench/dien_scoring.py --artifact DIR          # the dien.onnx of a trained artifact instead

Histories are real: `--sessions` test prefixes of the data set drawn at random (`--seed`), each its last L clicks,
padded to the batch's longest as the worker pads them (to exactly L for a graph exported before its L was
dynamic). The graph's AUGRU runs over the real clicks only, so the batch's mean history length is printed with
the figures. With --artifact the candidates are what the worker would re-rank: the artifact's retriever's top N
for each prefix (its state rebuilt from the prefix's kept clicks); without, a freshly exported untrained DIEN
(--item-dim, --members, --categories; its weights do not change its cost) scores the catalogue's most popular items.
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

from models.dien import DIEN, DIENEnsemble
from models.export import export_dien
from stream_app.inference.scoring import Scorer
from training.data.click_log import EncodedSplit
from training.data.datasets import dataset_names, load_dataset
from training.data.prefixes import Prefixes
from training.data.readers import read_item_categories
from training.trainers.dien import DIENTraining


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=dataset_names(), default="diginetica_srgnn")
    parser.add_argument("--artifact", type=Path, help="an artifact directory holding dien.onnx")
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="which test prefixes make the batch")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--item-dim", type=int, default=128, help="without --artifact (configs/diginetica.toml's)")
    parser.add_argument("--members", type=int, default=1, help="without --artifact: DIENs averaged")
    parser.add_argument("--categories", type=Path, help="without --artifact: an item → category file "
                        "(Diginetica's: data/diginetica/product-categories.csv.gz); none: items by id alone")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    split = EncodedSplit.of(*load_dataset(args.dataset))
    with tempfile.TemporaryDirectory() as scratch:
        if args.artifact:
            path = args.artifact / "dien.onnx"
            max_len = json.loads((args.artifact / "manifest.json").read_text())["models"]["dien"]["max_len"]
            described = f"from {args.artifact}"
        else:
            params = DIENTraining(item_dim=args.item_dim)
            max_len = params.max_len
            categories = read_item_categories(args.categories, split.item_map) if args.categories else None
            config = params.model_config(len(split.popularity), 0 if categories is None else int(categories.max()) + 1)
            members = [DIEN(config, None if categories is None else torch.from_numpy(categories))
                       for _ in range(args.members)]
            model = members[0] if args.members == 1 else DIENEnsemble(members)
            path = export_dien(model, Path(scratch) / "dien.onnx")
            described = (f"untrained, {args.members} x {config.embedding_dim} wide"
                         f"{' (categories)' if categories is not None else ''}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

        prefixes = Prefixes.of(split.test, max_len)
        batch = prefixes.batch(np.random.default_rng(args.seed).choice(len(prefixes), args.sessions, replace=False))
        items = batch.items.numpy()  # padded to the batch's longest
        width = {graph_input.name: graph_input.shape for graph_input in session.get_inputs()}["items"][1]
        if isinstance(width, int):  # a graph of fixed L
            items = np.pad(items, ((0, 0), (0, width - items.shape[1])))
        if args.artifact:
            candidates = retrieved(args.artifact, split, batch.items.numpy(), batch.lengths.numpy(), args.candidates)
        else:
            candidates = np.tile(np.argsort(-split.popularity, kind="stable")[: args.candidates], (args.sessions, 1))
        feed = {"items": items, "lengths": batch.lengths.numpy(), "candidates": candidates.astype(np.int64)}
        for _ in range(10):
            session.run(None, feed)
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            session.run(None, feed)
            seconds.append(time.perf_counter() - started)
    ms = np.array(seconds) * 1000
    lengths = batch.lengths.numpy()
    print(f"machine: {cpu_name()}; onnxruntime {ort.__version__}, intra-op threads {args.threads or 'default'}; "
          f"torch {torch.__version__} (export only)")
    print(f"DIEN {described}: {args.sessions} sessions x {args.candidates} candidates, L = {max_len}, "
          f"{args.repeats} calls")
    print(f"histories (test prefixes, seed {args.seed}): mean {lengths.mean():.2f} clicks, longest {lengths.max()}; "
          f"fed {items.shape[1]} wide")
    print(f"candidates: {'the retriever' if args.artifact else 'the most popular items'}'s top {args.candidates}")
    print(f"per batch: median {np.median(ms):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms, min {ms.min():.2f} ms; "
          f"{args.sessions * args.candidates / np.median(ms) * 1000:,.0f} candidate scores/s")


def retrieved(artifact: Path, split: EncodedSplit, items: np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
    """The artifact's retriever's top `n` [B, n] for each padded history, as the worker would hand them to DIEN."""
    retriever = json.loads((artifact / "manifest.json").read_text())["models"]["dien"]["retriever"]
    scorer = Scorer(artifact, intra_op_threads=1, pipeline=retriever)
    if scorer.item_ids != [str(item) for item in split.item_map.ids]:
        raise SystemExit(f"{artifact} was not trained on this data set's items (--dataset)")
    histories = [row[:length].tolist() for row, length in zip(items, lengths, strict=True)]
    hidden = scorer.rebuild_hidden([history[:-1] for history in histories]) if scorer.stateful else None
    return scorer.score(np.array([history[-1] for history in histories]), hidden, histories).top_items[:, :n]


if __name__ == "__main__":
    main()
