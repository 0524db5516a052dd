"""Recall/MRR@5/10/20 of the simple baselines (popularity, item-kNN, V-SKNN, STAN) on a data set, with wall times.

    python bench/baselines.py --dataset diginetica_srgnn
    python bench/baselines.py --dataset yoochoose1_64_srgnn --only vsknn stan
    python bench/baselines.py --dataset diginetica_srgnn --config configs/diginetica.toml

Same protocol and predictions as the models' table (`training.evaluation.evaluate`); default parameters of each baseline
(`training.evaluation.baselines`), or a config file's [item_knn], [vsknn], [stan] tables as `training.retrain` reads
them. Data sets with timestamps give STAN its time decay in seconds; the others use session order.
"""

from __future__ import annotations

import argparse
import os
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from training.data.click_log import EncodedSplit
from training.data.datasets import dataset_names, load_dataset
from training.evaluation.baselines import BASELINES, baseline_ranks, session_end_times
from training.evaluation.evaluate import RankingMetrics, format_table, popularity_ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=dataset_names(), default="diginetica_srgnn")
    parser.add_argument("--only", nargs="+", choices=list(BASELINES), default=list(BASELINES))
    parser.add_argument("--config", type=Path,
                        help="TOML file whose [item_knn], [vsknn], [stan] tables override the defaults")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    tables = tomllib.loads(args.config.read_text()) if args.config else {}

    started = time.perf_counter()
    train_log, test_log = load_dataset(args.dataset)
    split = EncodedSplit.of(train_log, test_log)
    times = session_end_times(train_log)
    print(f"data: {args.dataset}, {split.train.n_sessions:,} training sessions, {len(split.item_map):,} items, "
          f"{split.test.n_clicks - split.test.n_sessions:,} test predictions; "
          f"{'timestamps' if times is not None else 'no timestamps (STAN: session order)'}; "
          f"loaded in {time.perf_counter() - started:.1f} s", flush=True)
    dropped = split.test.n_dropped_clicks
    rows = [RankingMetrics.from_ranks("popularity", popularity_ranks(split.popularity, split.test), dropped)]
    seconds = {}
    for name in args.only:
        clock = time.perf_counter()
        params = BASELINES[name].params(**tables.get(name, {}))
        ranks = baseline_ranks(name, params, split, train_times=times, progress=not args.no_progress)
        seconds[name] = time.perf_counter() - clock
        rows.append(RankingMetrics.from_ranks(name, ranks, dropped))
        print(f"[{name}: {seconds[name]:.1f} s]", flush=True)
    if args.config:
        chosen = "; ".join(f"{name} {tables[name]}" for name in args.only if name in tables)
        print(f"settings of {args.config}: {chosen or 'none for these baselines'}")
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs visible, "
          f"total {time.perf_counter() - started:.1f} s ({', '.join(f'{n} {s:.0f} s' for n, s in seconds.items())})")
    print(format_table(rows))


if __name__ == "__main__":
    main()
