"""Every GRU4Rec loss at the same settings on the same split: how much the stronger losses gain.

    python bench/loss_comparison.py --dataset yoochoose_rsc15_100k --epochs 5
    python bench/loss_comparison.py --dataset diginetica_srgnn --epochs 3 --losses bpr top1 bpr-max

Prints one metrics table (and the popularity baseline) and saves a bar chart next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from training.data.click_log import EncodedSplit
from training.data.datasets import dataset_names, load_dataset
from training.evaluation.evaluate import evaluate, format_table
from training.retrain import training_params
from training.trainers.gru4rec import train_gru4rec
from training.trainers.losses import LOSSES

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=dataset_names(), default="yoochoose_rsc15_100k")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "gru4rec_diginetica.toml")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--plot", type=Path, default=REPO / "runs" / "loss_comparison.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_log, test_log = load_dataset(args.dataset)
    split = EncodedSplit.of(train_log, test_log)
    train, test, popularity = split.train, split.test, split.popularity
    base = training_params("gru4rec", args.config, n_epochs=args.epochs)
    rows = []
    for loss in args.losses:
        # ELU belongs to the -max losses; the plain pairwise losses use raw scores as in the original paper
        params = dataclasses.replace(base, loss=loss, elu_param=base.elu_param if loss.endswith("-max") else 0.0,
                                     logq=1.0 if loss == "cross-entropy" else 0.0)
        model, history = train_gru4rec(train, popularity, params, progress=False)
        metrics, baseline = evaluate(model, popularity, test, name=loss)
        rows.append(metrics)
        print(f"{loss}: {history.epochs[-1].events_per_second:,.0f} events/s, Recall@20 {metrics.recall[20]:.4f}, "
              f"MRR@20 {metrics.mrr[20]:.4f}", flush=True)
    rows.append(baseline)
    print(f"\n{args.dataset}, {args.epochs} epochs, settings {args.config.name} (loss varied)\n")
    print(format_table(rows))

    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("recall", "mrr")):
        ax.bar([r.name for r in rows], [getattr(r, metric)[20] for r in rows])
        ax.set_title(f"{metric.upper()}@20, {args.dataset}")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"\nchart: {args.plot}")


if __name__ == "__main__":
    main()
