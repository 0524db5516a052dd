"""`python -m training.retrain`: click log in, trained and evaluated models out, as one artifact.

    python -m training.retrain --dataset yoochoose_rsc15_100k --epochs 3
    python -m training.retrain --dataset diginetica_srgnn --config configs/diginetica.toml
    python -m training.retrain --models gru4rec narm --gru4rec-layers 256 --narm-hidden-size 200
    python -m training.retrain --train my_clicks.csv --test my_test.csv --session-key sid --item-key iid

Trains GRU4Rec, NARM and DIEN by default (`--models` picks some). DIEN is the second stage: it re-ranks the
top-N of its retriever (`--dien-retriever`, GRU4Rec by default), which must be trained in the same run.
Each model's hyper-parameters come from its defaults, then the TOML config file's table of its name
([gru4rec], [narm], [dien]), then the flags `--<model>-<name>`; `--epochs` sets every model's epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tomllib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, get_origin

import numpy as np
import torch

from models.export import export_dien, export_gru4rec, export_narm
from stream_app.scoring import Scorer, verify_artifact
from training.artifact import code_version, new_version, write_artifact_metadata
from training.data import ClickLog, EncodedSplit, Sessions, read_item_categories
from training.datasets import custom_dataset, dataset_names, load_dataset
from training.dien_trainer import DIENTraining, train_dien
from training.evaluate import (
    CUTOFFS,
    RankingMetrics,
    Retrieval,
    ScoreBatches,
    format_table,
    graph_retrieval,
    pairwise_auc,
    prefix_model_scores,
    reranked_ranks,
    retrieve,
    step_model_scores,
    with_popularity_baseline,
)
from training.gru4rec_trainer import GRU4RecTrainer, GRU4RecTraining
from training.lanes import lane_executor, staged
from training.narm_trainer import NARMTraining, train_narm
from training.plots import plot_training_curve
from training.progress import StageClock, TrainingHistory
from training.publish import add_publish_arguments, publish_trained, staging_dir
from training.stream_source import add_topic_arguments, topic_click_logs

SERVING_TOP_K = 100
PROTOCOL = ("next-item prediction at every click of every test session; hidden state zero at each test session "
            "start; full-catalogue ranking; rank = #items scoring >= target (conservative ties); clicks on items "
            "unseen in training dropped and counted; two-stage: the retriever's top-N re-ranked, every other item "
            "after it in retrieval order")
PARAMS = {"gru4rec": GRU4RecTraining, "narm": NARMTraining, "dien": DIENTraining}
RETRIEVERS = ("gru4rec", "narm")


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
    add_topic_arguments(parser)

    models = parser.add_argument_group("models")
    models.add_argument("--models", nargs="+", choices=list(PARAMS), default=list(PARAMS),
                        help="which to train (default: all)")
    models.add_argument("--config", type=Path, help="TOML file with [gru4rec], [narm] and/or [dien] tables")
    models.add_argument("--epochs", type=int, help="every model's number of epochs")
    models.add_argument("--retriever-artifact", type=Path, metavar="DIR",
                        help="take GRU4Rec from this artifact (its serving graph) instead of training it: "
                             "retrains DIEN alone on a retriever that stays; the data must be the same")
    for model, params in PARAMS.items():
        group = parser.add_argument_group(f"{model} hyper-parameters (override the config file)")
        for field in dataclasses.fields(params):
            group.add_argument(f"--{model}-{field.name.replace('_', '-')}", dest=f"{model}.{field.name}",
                               type=_flag_type(field), default=None, help=f"default {field.default}")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="write the artifact here and do not push it (default: build it in "
                     "NEXTCLICK_ARTIFACT_DIR/staging/<version>, then gate, push and promote it)")
    out.add_argument("--top-k", type=int, default=SERVING_TOP_K, help="items the retrievers' serving graphs return")
    out.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    out.add_argument("--lanes", type=int, default=1,
                     help="train the independent models side by side in this many processes, sharing the threads "
                          "(training.lanes; default: %(default)s, one after another)")
    out.add_argument("--no-progress", action="store_true", help="no progress bars (still one line per epoch)")
    add_publish_arguments(parser)
    return parser


def training_params(model: str = "gru4rec", config: Path | None = None, **overrides) -> Any:
    """`model`'s defaults, then the config file's table of that name, then the overrides that are not None."""
    values: dict = tomllib.loads(config.read_text()).get(model, {}) if config else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return PARAMS[model](**values)


def model_params(args: argparse.Namespace, model: str) -> Any:
    overrides = {f.name: getattr(args, f"{model}.{f.name}") for f in dataclasses.fields(PARAMS[model])}
    overrides["n_epochs"] = overrides["n_epochs"] if overrides["n_epochs"] is not None else args.epochs
    return training_params(model, args.config, **overrides)


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    chosen = {model: model_params(args, model) for model in args.models}
    if "dien" in chosen and chosen["dien"].n_candidates > args.top_k:
        raise SystemExit(f"DIEN re-ranks the retriever's top {chosen['dien'].n_candidates}, but its graph returns "
                         f"--top-k {args.top_k}")
    if args.retriever_artifact and "gru4rec" in chosen:
        raise SystemExit("--retriever-artifact supplies GRU4Rec: leave gru4rec out of --models")
    if args.retriever_artifact and "dien" in chosen and chosen["dien"].retriever_warm_start_epochs:
        raise SystemExit("--retriever-artifact supplies GRU4Rec: DIEN's retriever_warm_start_epochs has no "
                         "retriever of this run to continue (set it to 0)")
    if args.lanes > 1 and "dien" in chosen and chosen["dien"].retriever_warm_start_epochs:
        raise SystemExit("DIEN's retriever_warm_start_epochs continues the fold retriever in this process: "
                         "it needs --lanes 1")
    if args.lanes < 1:
        raise SystemExit("--lanes must be at least 1")
    available = set(chosen) | ({"gru4rec"} if args.retriever_artifact else set())
    if "dien" in chosen and chosen["dien"].retriever not in available:
        raise SystemExit(f"DIEN re-ranks {chosen['dien'].retriever}'s candidates: add it to --models "
                         f"(or pick another --dien-retriever from {', '.join(m for m in RETRIEVERS if m in chosen)})")
    return chosen


def load_logs(args: argparse.Namespace) -> tuple[ClickLog, ClickLog, str]:
    if args.train or args.test:
        if not (args.train and args.test):
            raise SystemExit("--train and --test go together")
        spec = custom_dataset(args.train, args.test, session_key=args.session_key, item_key=args.item_key,
                              time_key=args.time_key)
    else:
        spec = args.dataset
    train, test = topic_click_logs(args) if args.from_topic else load_dataset(spec, validation=args.validation)
    name = f"topic {args.from_topic}" if args.from_topic else spec if isinstance(spec, str) else spec.name
    if args.max_train_sessions:
        train = train.head_sessions(args.max_train_sessions)
    if args.max_test_sessions:
        test = test.head_sessions(args.max_test_sessions)
    return train, test, name


# A retriever's top-N (and the targets' ranks) for every prediction of some sessions, in click order.
RetrievalOf = Callable[[Sessions, int], Retrieval]


@dataclass
class TrainedModel:
    name: str
    history: TrainingHistory | None  # None: taken from another artifact, not trained here
    params: Any
    ranks: np.ndarray  # test predictions, click order
    manifest_entry: dict
    export: Callable[[Path], Path]


def fit_retriever(name: str, params: Any, sessions: Sessions, popularity: np.ndarray, progress: bool,
                  continued: GRU4RecTrainer | None = None,
                  ) -> tuple[torch.nn.Module, TrainingHistory, GRU4RecTrainer | None]:
    """A retriever trained on `sessions` (`continued`: that GRU4Rec trained `params.n_epochs` more), its history
    and (GRU4Rec) its trainer, to continue it."""
    if name == "gru4rec":
        trainer = continued or GRU4RecTrainer(popularity, params)
        return trainer.fit(sessions, params.n_epochs, progress), trainer.history, trainer
    model, history = train_narm(sessions, popularity, params, progress=progress)
    return model, history, None


def retriever_scores(model: torch.nn.Module, params: Any) -> ScoreBatches:
    """How a retriever scores the predictions of any sessions: step by step (GRU4Rec) or prefix by prefix (NARM)."""
    if isinstance(params, GRU4RecTraining):
        return step_model_scores(model)
    return prefix_model_scores(model, params.max_len)


def retriever_job(clock: StageClock, name: str, params: Any, split: EncodedSplit, top_k: int, progress: bool,
                  continued: GRU4RecTrainer | None = None) -> tuple[torch.nn.Module, TrainingHistory, Retrieval]:
    """A lane's work for a retriever: trained on every training session, then its top-K for the test
    predictions (scored once: its own row of the table and the re-ranker's test candidates both come from it)."""
    stage = f"{name} training" + (" (continuing dien's fold retriever)" if continued else "")
    with clock.stage(stage):
        model, history, _ = fit_retriever(name, params, split.train, split.popularity, progress, continued)
    with clock.stage(f"{name} test top-{top_k}"):
        test = retrieve(retriever_scores(model, params), split.test, top_k)
    return model, history, test


def served_retriever(name: str, params: Any, model: torch.nn.Module, history: TrainingHistory, test: Retrieval,
                     top_k: int, n_items: int) -> tuple[TrainedModel, RetrievalOf]:
    """A trained retriever as the artifact holds it, and how it retrieves for any sessions."""
    if name == "gru4rec":
        entry = {"layers": model.n_layers, "hidden_size": model.hidden_size}
        export = lambda path: export_gru4rec(model, path, top_k=top_k)
    else:
        entry = {"max_len": params.max_len}
        export = lambda path: export_narm(model, path, top_k=top_k)
    entry |= {"file": f"{name}.onnx", "kind": "retriever", "n_items": n_items, "top_k": top_k}
    retrieval_of = partial(retrieve, retriever_scores(model, params))
    return TrainedModel(name, history, params, test.ranks, entry, export), retrieval_of


def published_retriever(artifact: Path, split: EncodedSplit) -> tuple[TrainedModel, RetrievalOf, Retrieval]:
    """The GRU4Rec of an existing artifact, through its serving graph: DIEN retrained on a retriever that stays."""
    scorer = Scorer(artifact, intra_op_threads=torch.get_num_threads())
    if scorer.item_ids != [str(i) for i in split.item_map.ids]:
        raise SystemExit(f"{artifact} was trained on other items than this data: its retriever cannot be reused")
    source = artifact / scorer.name

    def retrieval_of(sessions: Sessions, n: int) -> Retrieval:
        return graph_retrieval(scorer, sessions).best(n)

    entry = verify_artifact(artifact)["models"][scorer.name]
    export = lambda path: Path(shutil.copyfile(source.with_name(entry["file"]), path))
    test = graph_retrieval(scorer, split.test)
    trained = TrainedModel(scorer.name, None, {"artifact": str(artifact), "version": scorer.version},
                           test.ranks, entry, export)
    return trained, retrieval_of, test


@dataclass
class StackedData:
    """What DIEN trains on under stacking: sessions, their retriever's top-N, and the last fold's retriever."""

    sessions: Sessions
    retrieved: Retrieval
    fold_trainer: GRU4RecTrainer | None  # with `retriever_warm_start_epochs`: the one the serving GRU4Rec continues


def stacked_training_data(params: DIENTraining, retriever_params: Any, split: EncodedSplit,
                          progress: bool) -> StackedData:
    """The sessions DIEN trains on and the retriever's top-N for each of their prefixes.

    A retriever scoring the prefixes it was trained on is far more confident than on new sessions (GRU4Rec
    on Diginetica: the next click in its top 100 for 95 % of its training prefixes, 82 % of the test's), and
    DIEN trained there learns to correct the wrong retriever. So (stacking, `holdout_fraction` f > 0) DIEN
    trains on the latest f of the training sessions, cut into `holdout_folds` k consecutive folds; each
    fold's candidates come from a retriever trained with the same settings (at most
    `holdout_retriever_epochs`) on every other training session: clicks that retriever never saw, as at
    serving time (k = 1: one retriever on the earlier sessions; k > 1: cross-fitting, k retrievers, each
    trained on all but f/k of the sessions). The retriever that serves is trained on everything: from scratch,
    or (`retriever_warm_start_epochs`) by continuing the one fold retriever."""
    n = params.n_candidates
    train = split.train
    first_held = round((1 - params.holdout_fraction) * train.n_sessions)
    bounds = np.linspace(first_held, train.n_sessions, params.holdout_folds + 1).round().astype(int)
    fold_params = dataclasses.replace(retriever_params,
                                      n_epochs=min(params.holdout_retriever_epochs, retriever_params.n_epochs))
    retrievals = []
    for fold, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:]), 1):
        before, rest = train.split_at(start)
        held, after = rest.split_at(stop - start)
        seen = Sessions.concat([before, after])
        print(f"fold {fold}/{params.holdout_folds}: {params.retriever} on {seen.n_sessions:,} training sessions "
              f"({fold_params.n_epochs} epochs), DIEN's candidates for sessions {start:,}..{stop - 1:,}")
        model, _, trainer = fit_retriever(params.retriever, fold_params, seen, split.popularity, progress)
        retrievals.append(retrieve(retriever_scores(model, fold_params), held, n))
    # the fold retriever (model, Adagrad state: hundreds of MB on Diginetica) is kept only to be continued
    kept = trainer if params.retriever_warm_start_epochs else None
    return StackedData(train.split_at(first_held)[1], Retrieval.concat(retrievals), kept)


def stacking_job(clock: StageClock, params: DIENTraining, retriever_params: Any, split: EncodedSplit,
                 progress: bool) -> StackedData:
    with clock.stage(f"dien's training candidates (fold {params.retriever} training included)"):
        return stacked_training_data(params, retriever_params, split, progress)


def reranker_inputs(params: DIENTraining, stacked: StackedData | None, retrieval_of: RetrievalOf | None,
                    split: EncodedSplit, clock: StageClock) -> tuple[Sessions, Retrieval]:
    """The sessions DIEN trains on and their retriever's top-N: stacked, or without stacking every training
    prefix's top-N of the serving retriever."""
    if stacked:
        return stacked.sessions, stacked.retrieved
    with clock.stage(f"dien's training candidates ({params.retriever} on every training prefix)"):
        return split.train, retrieval_of(split.train, params.n_candidates)


def reranker_job(clock: StageClock, params: DIENTraining, sessions: Sessions, retrieved: Retrieval,
                 split: EncodedSplit, progress: bool) -> tuple[torch.nn.Module, TrainingHistory]:
    categories = read_item_categories(params.categories, split.item_map) if params.categories else None
    with clock.stage("dien training"):
        return train_dien(sessions, split.popularity, params, retrieved, categories, progress=progress)


def evaluated_reranker(params: DIENTraining, model: torch.nn.Module, history: TrainingHistory,
                       training_sessions: Sessions, test_retrieval: Retrieval, split: EncodedSplit,
                       clock: StageClock) -> tuple[TrainedModel, dict]:
    """DIEN's two-stage ranks and figures on the test set."""
    n = params.n_candidates
    test_retrieval = test_retrieval.best(n)
    prior_weight = model.prior_weight.item() if params.residual else None
    with clock.stage(f"dien test re-ranking of the top-{n}"):
        ranks = reranked_ranks(model, params.max_len, split.test, test_retrieval, prior_weight)
    with clock.stage("dien AUC"):
        auc = pairwise_auc(model, params.max_len, split.test, split.popularity, params.sample_alpha, seed=params.seed)
    figures = {"retriever": params.retriever, "n_candidates": n, "prior_weight": prior_weight,
               "dien_training_sessions": training_sessions.n_sessions, "holdout_fraction": params.holdout_fraction,
               f"retriever_recall@{n}": float((test_retrieval.ranks <= n).mean()) if len(ranks) else 0.0,
               "dien_auc": auc}
    entry = {"file": "dien.onnx", "kind": "reranker", "retriever": params.retriever, "n_candidates": n,
             "prior_weight": prior_weight, "max_len": params.max_len, "n_items": len(split.popularity)}
    trained = TrainedModel(f"{params.retriever}->dien", history, params, ranks, entry,
                           lambda path: export_dien(model, path))
    return trained, figures


def epochs_record(history: TrainingHistory) -> list[dict]:
    return [dataclasses.asdict(e) | {"events_per_second": e.events_per_second} for e in history.epochs]


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    trained_by = code_version()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = params_from_args(args)
    clock = StageClock()
    with clock.stage("loading"):
        train_log, test_log, data_name = load_logs(args)
        split = EncodedSplit.of(train_log, test_log)
    train, test, item_map, popularity = split.train, split.test, split.item_map, split.popularity
    print(f"{data_name}: train {train.n_sessions:,} sessions / {train.n_clicks:,} clicks / {len(item_map):,} items; "
          f"test {test.n_sessions:,} sessions / {test.n_clicks:,} clicks ({test.n_dropped_clicks:,} clicks on "
          f"unseen items dropped)")

    trained: dict[str, TrainedModel] = {}
    retrievers: dict[str, tuple[RetrievalOf, Retrieval]] = {}
    if args.retriever_artifact:
        with clock.stage(f"gru4rec of {args.retriever_artifact}: its test top-{args.top_k}"):
            trained["gru4rec"], retrieval_of, test_retrieval = published_retriever(args.retriever_artifact, split)
        retrievers["gru4rec"] = (retrieval_of, test_retrieval)
    dien = params.get("dien")
    progress = not args.no_progress and args.lanes == 1  # lanes: one line per epoch, no bars over each other

    results: dict[Future, Any] = {}

    def result(future: Future) -> Any:
        """A job's result, its stages added to the run's clock (once)."""
        if future not in results:
            results[future], stages = future.result()
            clock.stages.extend(stages)
        return results[future]

    def submit(label: str, job: Callable, *job_args: Any) -> Future:
        future = lanes.submit(staged, f"{label}: " if args.lanes > 1 else "", job, *job_args)
        if future.done():  # one lane: done as submitted, its stages go on the clock in the order they ran
            result(future)
        return future

    with lane_executor(args.lanes, torch.get_num_threads()) as lanes:
        stacking = None  # first: with `retriever_warm_start_epochs` the serving retriever continues the fold one
        if dien and dien.holdout_fraction:
            print(f"\ndien's training candidates: {dien.retriever}'s top {dien.n_candidates} under stacking")
            # a published retriever's fold copy is trained with this run's settings of that retriever
            retriever_params = params.get(dien.retriever) or model_params(args, dien.retriever)
            stacking = submit(f"{dien.retriever} (dien's fold)", stacking_job, dien, retriever_params, split, progress)
        training = {}
        for name in (m for m in RETRIEVERS if m in params):
            continued = None
            retriever_params = params[name]
            if stacking and dien.retriever_warm_start_epochs and name == dien.retriever:
                continued = result(stacking).fold_trainer  # one lane only (validated): done by now
                retriever_params = dataclasses.replace(retriever_params, n_epochs=dien.retriever_warm_start_epochs)
            print(f"\n{name}" + (f": dien's fold retriever, {dien.retriever_warm_start_epochs} more epochs on every "
                                 "training session" if continued else ""))
            training[name] = submit(name, retriever_job, name, retriever_params, split, args.top_k, progress, continued)

        def collect(name: str) -> None:
            model, history, test_retrieval = result(training.pop(name))
            trained[name], retrieval_of = served_retriever(name, params[name], model, history, test_retrieval,
                                                           args.top_k, len(popularity))
            retrievers[name] = (retrieval_of, test_retrieval)

        if dien:
            print(f"\ndien, re-ranking {dien.retriever}'s top {dien.n_candidates}")
            stacked = result(stacking) if stacking else None
            if not stacked and dien.retriever in training:
                collect(dien.retriever)  # its top-N of every training prefix is DIEN's training data
            retrieval_of = retrievers[dien.retriever][0] if dien.retriever in retrievers else None
            dien_sessions, retrieved = reranker_inputs(dien, stacked, retrieval_of, split, clock)
            reranking = submit("dien", reranker_job, dien, dien_sessions, retrieved, split, progress)
        for name in list(training):
            collect(name)
        two_stage: dict = {}
        if dien:
            model, history = result(reranking)
            trained["dien"], two_stage = evaluated_reranker(dien, model, history, dien_sessions,
                                                            retrievers[dien.retriever][1], split, clock)
    rows: list[RankingMetrics] = []
    with clock.stage("evaluation"):
        for t in trained.values():
            model_row, popularity_row = with_popularity_baseline(t.name, t.ranks, popularity, test)
            rows.append(model_row)
        rows.append(popularity_row)
    print()
    print(format_table(rows))
    if two_stage:
        n = two_stage["n_candidates"]
        print(f"\n{two_stage['retriever']} Recall@{n} (the re-ranker's ceiling): "
              f"{two_stage[f'retriever_recall@{n}']:.4f}; DIEN AUC (held-out next clicks vs popularity-sampled "
              f"items): {two_stage['dien_auc']:.4f}")

    version = new_version()
    out = args.out or staging_dir(version)
    out.mkdir(parents=True, exist_ok=True)
    with clock.stage("ONNX exports and training curves"):
        for name, t in trained.items():
            t.export(out / t.manifest_entry["file"])
            if t.history is not None:
                plot_training_curve(t.history, out / f"{name}_training_curve.png", f"{t.name} on {data_name}")
    metrics = {
        "dataset": data_name,
        "split": "validation" if args.validation else "test",
        "protocol": PROTOCOL,
        "cutoffs": list(CUTOFFS),
        "results": {m.name: m.to_dict() for m in rows},
        "two_stage": two_stage,
        "stages": clock.stages,
        "training": {name: {"epochs": epochs_record(t.history)} for name, t in trained.items() if t.history}
                    | {"threads": torch.get_num_threads(), "lanes": args.lanes},
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
        config={name: p.to_dict() for name, p in params.items()} | {"top_k": args.top_k}
               | ({"gru4rec": trained["gru4rec"].params} if args.retriever_artifact else {}),
        metrics=metrics,
        models={name: t.manifest_entry for name, t in trained.items()},
    )
    print(f"\nartifact {version} written to {out}")
    publish_trained(out, test_log, args)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
