"""`python -m training.retrain`: click log in, trained and evaluated models out, as one artifact.

    python -m training.retrain --dataset yoochoose_rsc15_100k --epochs 3
    python -m training.retrain --dataset diginetica_srgnn --config configs/gru4rec_diginetica.toml
    python -m training.retrain --train my_clicks.csv --test my_test.csv --session-key sid --item-key iid

Hyper-parameters come from the defaults (the official GRU4Rec best settings for Diginetica), then a
TOML config file's [gru4rec] table, then flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tomllib
from pathlib import Path
from typing import get_origin

import torch

from models.export import export_gru4rec
from stream_app.settings import get_settings
from training.artifact import code_version, new_version, write_artifact_metadata
from training.data import ClickLog, EncodedSplit
from training.datasets import custom_dataset, dataset_names, load_dataset
from training.evaluate import CUTOFFS, evaluate, format_table
from training.plots import plot_training_curve
from training.trainer import GRU4RecTraining, train_gru4rec

SERVING_TOP_K = 100
PROTOCOL = ("next-item prediction at every click of every test session; hidden state zero at each test session "
            "start; full-catalogue ranking; rank = #items scoring >= target (conservative ties); clicks on items "
            "unseen in training dropped and counted")


def _flag_type(field: dataclasses.Field):
    if get_origin(field.type) is tuple or "tuple" in str(field.type):
        return lambda text: tuple(int(x) for x in text.replace("/", ",").split(","))
    if field.type in (bool, "bool"):
        return lambda text: text.lower() in ("1", "true", "yes")
    return {"int": int, "float": float, "str": str}.get(str(field.type), type(field.default))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.retrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=dataset_names(), default="yoochoose_rsc15_100k",
                      help="a data set under NEXTCLICK_DATA_DIR (default: %(default)s)")
    data.add_argument("--validation", action="store_true", help="evaluate on the validation split instead of test")
    data.add_argument("--train", type=Path, help="your own training click log (CSV/TSV/Parquet); needs --test")
    data.add_argument("--test", type=Path, help="your own test click log")
    data.add_argument("--session-key", default="SessionId")
    data.add_argument("--item-key", default="ItemId")
    data.add_argument("--time-key", default="Time")
    data.add_argument("--max-train-sessions", type=int, help="train on the first N sessions only (smoke runs)")
    data.add_argument("--max-test-sessions", type=int, help="evaluate on the first N test sessions only")

    hyper = parser.add_argument_group("GRU4Rec hyper-parameters (override the config file)")
    hyper.add_argument("--config", type=Path, help="TOML file with a [gru4rec] table")
    for field in dataclasses.fields(GRU4RecTraining):
        hyper.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=_flag_type(field),
                           default=None, help=f"default {field.default}")
    hyper.add_argument("--epochs", dest="n_epochs", type=int, default=None, help="alias of --n-epochs")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="artifact directory (default: NEXTCLICK_ARTIFACT_DIR/<version>)")
    out.add_argument("--top-k", type=int, default=SERVING_TOP_K, help="items the serving graph returns")
    out.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    out.add_argument("--no-progress", action="store_true")
    return parser


def training_params(config: Path | None = None, **overrides) -> GRU4RecTraining:
    """Defaults, then the config file's [gru4rec] table, then the overrides that are not None."""
    values: dict = tomllib.loads(config.read_text()).get("gru4rec", {}) if config else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "layers" in values:
        values["layers"] = tuple(values["layers"])
    return GRU4RecTraining(**values)


def load_logs(args: argparse.Namespace) -> tuple[ClickLog, ClickLog, str]:
    if args.train or args.test:
        if not (args.train and args.test):
            raise SystemExit("--train and --test go together")
        spec = custom_dataset(args.train, args.test, session_key=args.session_key, item_key=args.item_key,
                              time_key=args.time_key)
    else:
        spec = args.dataset
    train, test = load_dataset(spec, validation=args.validation)
    name = spec if isinstance(spec, str) else spec.name
    if args.max_train_sessions:
        train = train.head_sessions(args.max_train_sessions)
    if args.max_test_sessions:
        test = test.head_sessions(args.max_test_sessions)
    return train, test, name


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    trained_by = code_version()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(GRU4RecTraining)}
    params = training_params(args.config, **overrides)
    train_log, test_log, data_name = load_logs(args)

    split = EncodedSplit.of(train_log, test_log)
    train, test, item_map, popularity = split.train, split.test, split.item_map, split.popularity
    print(f"{data_name}: train {train.n_sessions:,} sessions / {train.n_clicks:,} clicks / {len(item_map):,} items; "
          f"test {test.n_sessions:,} sessions / {test.n_clicks:,} clicks ({test.n_dropped_clicks:,} clicks on "
          f"unseen items dropped)")

    model, history = train_gru4rec(train, popularity, params, progress=not args.no_progress)
    gru4rec_metrics, popularity_metrics = evaluate(model, popularity, test, name="gru4rec")
    print()
    print(format_table([gru4rec_metrics, popularity_metrics]))

    version = new_version()
    out = args.out or get_settings().artifact_dir / version
    out.mkdir(parents=True, exist_ok=True)
    export_gru4rec(model, out / "gru4rec.onnx", top_k=args.top_k)
    plot_training_curve(history, out / "training_curve.png", f"GRU4Rec on {data_name} ({params.loss})")
    metrics = {
        "dataset": data_name,
        "split": "validation" if args.validation else "test",
        "protocol": PROTOCOL,
        "cutoffs": list(CUTOFFS),
        "results": {m.name: m.to_dict() for m in (gru4rec_metrics, popularity_metrics)},
        "training": {"epochs": [dataclasses.asdict(e) | {"events_per_second": e.events_per_second}
                                for e in history.epochs],
                     "threads": torch.get_num_threads()},
        "data": {
            "train_source": train_log.source, "test_source": test_log.source,
            "train_sessions": train.n_sessions, "train_clicks": train.n_clicks,
            "test_sessions": test.n_sessions, "test_clicks": test.n_clicks,
            "test_dropped_clicks": test.n_dropped_clicks,
            "train_time_range": train_log.time_range(),
        },
    }
    write_artifact_metadata(
        out, version=version, trained_by=trained_by, item_ids=item_map.ids, popularity=popularity,
        config={"gru4rec": params.to_dict(), "top_k": args.top_k},
        metrics=metrics,
        models={"gru4rec": {"file": "gru4rec.onnx", "n_items": len(item_map), "layers": model.n_layers,
                            "hidden_size": model.hidden_size, "top_k": args.top_k}},
    )
    print(f"\nartifact {version} written to {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
