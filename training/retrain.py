"""`python -m training.retrain`: click log in, trained and evaluated models out, as one artifact.

    python -m training.retrain --dataset yoochoose_rsc15_100k --epochs 3
    python -m training.retrain --dataset diginetica_srgnn --config configs/diginetica.toml
    python -m training.retrain --models gru4rec narm --gru4rec-layers 256 --narm-hidden-size 200
    python -m training.retrain --train my_clicks.csv --test my_test.csv --session-key sid --item-key iid
    python -m training.retrain --dataset diginetica_srgnn --config configs/diginetica.toml --device cuda

    python -m training.retrain --dataset diginetica_srgnn --models gru4rec narm --tune 20 --tune-timeout 7200

Trains GRU4Rec, NARM and DIEN by default (`--models` picks some). DIEN is the second stage: it re-ranks the
top-N of its retriever (`--dien-retriever`, GRU4Rec by default), which must be trained in the same run;
`--dien-retriever auto` chooses it by Recall@N on a validation split (`training.retriever_choice`).
Each model's hyper-parameters come from its defaults, then the TOML config file's table of its name
([gru4rec], [narm], [dien]), then the flags `--<model>-<name>`; `--epochs` sets every model's epochs.
The metrics table compares them with baselines on the same predictions: popularity, item-kNN, V-SKNN and STAN
(`training.evaluation.baselines`, settings from their defaults and the config's [item_knn], [vsknn], [stan];
evaluated, not
served; `--no-baselines` leaves the last three out). `--tune N` first searches every model's and baseline's
settings, N trials each, on a validation split of the training log (`training.tuning.search`; the test log is read only
after the search) and trains the best ones; a flag `--<model>-<name>` fixes that setting.

This module is the command line: the flags, the hyper-parameters they and the config give (`RetrainPlan`),
the data they name (`RetrainData`), and `main`. What it runs: `training.model_training` (training and evaluating
the models, on `training.parallel_trainings`), `training.artifact` (what the artifact holds), and how it ends:
`stream_app.release.publish` (the quality gate, the push and the promotion). Without `--out`, the artifact is
built in NEXTCLICK_ARTIFACT_DIR/staging/<version>, gated, pushed, promoted when the gate passes (or
`--force-promote`) and the staging copy removed; with `--out DIR` it stays in DIR and nothing is pushed unless
`--push`. A version the gate refuses is pushed but not promoted, and retrain exits with status 3, so that a
scheduled job shows up as failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import shutil
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import pydantic
import torch

from stream_app.cli_help import HelpFormatter, readable
from stream_app.release.publish import gate_and_push
from stream_app.settings import get_settings
from training.artifact import code_version, new_version, write_retrain_artifact
from training.data.click_log import ClickLog, EncodedSplit
from training.data.datasets import add_column_arguments, custom_dataset, dataset_files, dataset_names
from training.data.errors import exits_on_data_errors
from training.data.stream_source import add_topic_arguments, topic_click_logs
from training.evaluation.baselines import BASELINES, BaselineParams, session_end_times
from training.model_training import (
    RETRIEVERS,
    ModelTraining,
    RetrainData,
    RetrainPlan,
    evaluated_models,
)
from training.pipeline_choice import PipelineChoice, choose_pipeline
from training.progress import StageClock
from training.retriever_choice import RetrieverChoice, choose_retriever
from training.trainers.device import DEVICES, training_device
from training.trainers.dien import AUTO_RETRIEVER, DIENTraining
from training.trainers.gru4rec import GRU4RecTraining
from training.trainers.narm import NARMTraining
from training.tuning.search import METRICS, TUNABLE, TuningResult, TuningSettings, tune
from training.validation_retrievals import validation_retrievals

SERVING_TOP_K = 100
REFUSED_EXIT_STATUS = 3
PARAMS = {"gru4rec": GRU4RecTraining, "narm": NARMTraining, "dien": DIENTraining}
SETTINGS_OF = PARAMS | {name: baseline.params for name, baseline in BASELINES.items()}  # config tables


def _flag_type(annotation: type):
    """The flag's converter for a hyper-parameter of this type (resolved, bounds stripped: `get_type_hints`)."""
    if get_origin(annotation) is tuple:
        return lambda text: tuple(int(x) for x in text.replace("/", ",").split(","))
    if annotation is bool:
        return lambda text: text.lower() in ("1", "true", "yes")
    return annotation


def _field_notes(params: type) -> dict[str, str]:
    """The comment after each field of a hyper-parameter dataclass (and its bases): the flags' help."""
    notes: dict[str, str] = {}
    for cls in reversed(params.__mro__[:-1]):
        for line in inspect.getsource(cls).splitlines():
            if match := re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.+)", line):
                notes[match[1]] = match[2]
    return notes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.retrain", description=__doc__,
                                     formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=dataset_names(), default="yoochoose_rsc15_100k",
                      help="a data set under NEXTCLICK_DATA_DIR")
    data.add_argument("--validation", action="store_true", help="evaluate on the validation split instead of test")
    data.add_argument("--train", type=Path, help="your own training click log (CSV/TSV/Parquet); needs --test")
    data.add_argument("--test", type=Path, help="your own test click log")
    add_column_arguments(data)
    data.add_argument("--max-train-sessions", type=int, help="train on the first N sessions only (smoke runs)")
    data.add_argument("--max-test-sessions", type=int, help="evaluate on the first N test sessions only")
    add_topic_arguments(parser)

    models = parser.add_argument_group("models")
    models.add_argument("--models", nargs="+", choices=list(PARAMS), default=list(PARAMS),
                        help="which to train")
    models.add_argument("--config", type=Path, help="TOML file with [gru4rec], [narm] and/or [dien] tables")
    models.add_argument("--epochs", type=int, help="every model's number of epochs")
    models.add_argument("--no-baselines", action="store_true",
                        help="leave item-kNN, V-SKNN and STAN out of the metrics (quick runs; popularity stays)")
    models.add_argument("--retriever-artifact", type=Path, metavar="DIR",
                        help="take GRU4Rec from this artifact (its serving graph) instead of training it: "
                             "retrains DIEN alone on a retriever that stays; the data must be the same")
    for model, params in PARAMS.items():
        group = parser.add_argument_group(f"{model} hyper-parameters (override the config file)")
        notes, types = _field_notes(params), get_type_hints(params)
        for field in dataclasses.fields(params):
            group.add_argument(f"--{model}-{field.name.replace('_', '-')}", dest=f"{model}.{field.name}",
                               type=_flag_type(types[field.name]), default=None, choices=params.CHOICES.get(field.name),
                               metavar=None if field.name in params.CHOICES else field.name.upper(),
                               help=f"{notes.get(field.name, field.name.replace('_', ' '))} "
                                    f"(default: {readable(field.default).replace('%', '%%')})")

    tuning = parser.add_argument_group("hyper-parameter search (training.tuning.search)")
    tuning.add_argument("--tune", type=int, default=0, metavar="N",
                        help="search each model's and baseline's settings, N trials each, on a validation split of "
                             "the training data, then train the best (default: no search)")
    tuning.add_argument("--tune-timeout", type=float, metavar="SECONDS",
                        help="stop each model's search after this long (a trial under way ends first)")
    tuning.add_argument("--tune-seed", type=int, default=0, help="the sampler's seed (default: %(default)s)")
    tuning.add_argument("--tune-metric", choices=METRICS, default="mrr@20",
                        help="the validation figure to maximise (default: %(default)s)")
    tuning.add_argument("--tune-validation-fraction", type=float, default=0.1, metavar="F",
                        help="the latest F of the training sessions validate (--tune, --choose-pipeline, "
                             "--dien-retriever auto; default: %(default)s)")
    tuning.add_argument("--tune-epochs", type=int, metavar="E",
                        help="train each trial E epochs (default: each model's own n_epochs; the final training "
                             "always trains its own)")
    tuning.add_argument("--tune-sessions", type=float, default=1.0, metavar="F",
                        help="each trial trains on the latest F of the split's training sessions (default: "
                             "%(default)s, all of them)")
    tuning.add_argument("--tune-finalists", type=int, default=1, metavar="K",
                        help="where a trial's budget is below the final training's: train the K best trials and "
                             "trial 0 (the run's own settings) again in full and keep the best of them on "
                             "validation (default: %(default)s; 0: the short budget's best wins)")
    tuning.add_argument("--tune-models", nargs="+", choices=TUNABLE, metavar="NAME",
                        help=f"search only these ({', '.join(TUNABLE)}; default: every model and baseline of the run)")
    tuning.add_argument("--choose-pipeline", action="store_true",
                        help="choose the pipeline that serves (each retriever, V-SKNN, or a retriever blended with "
                             "V-SKNN at a weight of 0.1..0.9) by MRR@20 on the validation split and record it in the "
                             "artifact (NEXTCLICK_SERVING_MODEL=artifact serves it); the test table gets the blend's "
                             "row. Cost: every retriever trained once more, on the split's other sessions, then "
                             "V-SKNN and the blends scored on the held-out ones and V-SKNN's lists on the test "
                             "(training.pipeline_choice)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="write the artifact here and do not push it (default: build it in "
                     "NEXTCLICK_ARTIFACT_DIR/staging/<version>, then gate, push and promote it)")
    out.add_argument("--top-k", type=int, default=SERVING_TOP_K, help="items the retrievers' serving graphs return")
    out.add_argument("--device", choices=DEVICES, default=get_settings().train_device,
                     help="train and evaluate on the CPU or one CUDA GPU; auto: the GPU when torch sees one "
                          "(default: NEXTCLICK_TRAIN_DEVICE, %(default)s; docs/training-on-a-gpu.md)")
    out.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    out.add_argument("--lanes", type=int, default=1,
                     help="train the independent models side by side in this many processes, sharing the threads "
                          "(training.parallel_trainings; 1: one after another)")
    out.add_argument("--no-progress", action="store_true", help="no progress bars (still one line per epoch)")
    add_publish_arguments(parser)
    return parser


def training_params(model: str = "gru4rec", config: Path | None = None, **overrides) -> Any:
    """`model`'s (or a baseline's) defaults, then the config file's table of that name, then the overrides that
    are not None; each value checked against its field's type and bounds (pydantic) and the settings' own rules."""
    values: dict = tomllib.loads(config.read_text()).get(model, {}) if config else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    where = f"{config}: [{model}]" if config else f"{model}'s settings"
    known = {field.name for field in dataclasses.fields(SETTINGS_OF[model])}
    if unknown := sorted(set(values) - known):
        raise SystemExit(f"{where}: no setting {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    try:
        return pydantic.TypeAdapter(SETTINGS_OF[model]).validate_python(values)
    except pydantic.ValidationError as error:  # a value its settings refuse
        raise SystemExit(f"{where}: " + "; ".join(refusal(problem) for problem in error.errors())) from None


def refusal(problem: Any) -> str:
    """One of pydantic's refusals as `field: what is wrong (got value)`, or the settings' own message."""
    if problem["type"] == "value_error":  # raised by the settings' own checks (__post_init__)
        return str(problem["ctx"]["error"])
    field = ".".join(str(part) for part in problem["loc"])
    return f"{field}: {problem['msg']} (got {problem['input']!r})"


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
    if args.choose_pipeline and (args.retriever_artifact or not any(m in chosen for m in RETRIEVERS)):
        raise SystemExit("--choose-pipeline trains the retrievers on a validation split: it needs one in --models "
                         "(and no --retriever-artifact, whose retriever cannot be trained again)")
    if chosen_on_validation(chosen) and not all(m in chosen for m in RETRIEVERS):
        raise SystemExit(f"--dien-retriever auto chooses DIEN's retriever between {' and '.join(RETRIEVERS)} by "
                         "their Recall@N on a validation split: add both to --models")
    available = set(chosen) | ({"gru4rec"} if args.retriever_artifact else set()) | {AUTO_RETRIEVER}
    if "dien" in chosen and chosen["dien"].retriever not in available:
        raise SystemExit(f"DIEN re-ranks {chosen['dien'].retriever}'s candidates: add it to --models "
                         f"(or pick another --dien-retriever from {', '.join(m for m in RETRIEVERS if m in chosen)})")
    return chosen


def chosen_on_validation(params: dict[str, Any]) -> bool:
    """Whether DIEN's retriever is to be chosen on validation (`--dien-retriever auto`)."""
    return "dien" in params and params["dien"].retriever == AUTO_RETRIEVER


def open_logs(args: argparse.Namespace) -> tuple[ClickLog, Callable[[], ClickLog], str]:
    """The training log, how to read the test log, and the data's name. The test log is read when asked for
    (after a hyper-parameter search: it must not see it); a topic gives both at once and its test part waits."""
    if args.train or args.test:
        if not (args.train and args.test):
            raise SystemExit("--train and --test go together")
        spec = custom_dataset(args.train, args.test, session_key=args.session_key, item_key=args.item_key,
                              time_key=args.time_key)
    else:
        spec = args.dataset
    if args.from_topic:
        train, topic_test = topic_click_logs(args)
        read_test = lambda: topic_test
    else:
        files = dataset_files(spec, validation=args.validation)  # both files checked before either is read
        train, read_test = files.read_train(), files.read_test
    name = f"topic {args.from_topic}" if args.from_topic else spec if isinstance(spec, str) else spec.name
    if args.max_train_sessions:
        train = train.head_sessions(args.max_train_sessions)

    def test_log() -> ClickLog:
        test = read_test()
        return test.head_sessions(args.max_test_sessions) if args.max_test_sessions else test

    return train, test_log, name


def load_logs(args: argparse.Namespace) -> tuple[ClickLog, ClickLog, str]:
    train, test_log, name = open_logs(args)
    return train, test_log(), name


def baselines_from_args(args: argparse.Namespace) -> dict[str, BaselineParams]:
    return {} if args.no_baselines else {name: training_params(name, args.config) for name in BASELINES}


def plan_from_args(args: argparse.Namespace, params: dict[str, Any] | None = None,
                   baselines: dict[str, BaselineParams] | None = None) -> RetrainPlan:
    """What to train, and how, from the flags (validated), or with `params`/`baselines` (a search's) instead."""
    params = params_from_args(args) if params is None else params
    dien = params.get("dien")
    fold_retriever_params = None
    if dien and dien.holdout_fraction and not chosen_on_validation(params):  # else set once it is chosen
        # a published retriever's fold copy is trained with this run's settings of that retriever
        fold_retriever_params = params.get(dien.retriever) or model_params(args, dien.retriever)
    return RetrainPlan(params, top_k=args.top_k, lanes=args.lanes,
                       progress=not args.no_progress and args.lanes == 1,  # lanes: one line per epoch, no bars
                       retriever_artifact=args.retriever_artifact, fold_retriever_params=fold_retriever_params,
                       baselines=baselines_from_args(args) if baselines is None else baselines,
                       device=training_device(args.device))


def tuning_settings(args: argparse.Namespace, plan: RetrainPlan) -> TuningSettings | None:
    """The search the flags ask for (validated), None for none."""
    if not args.tune:
        if args.tune_timeout or args.tune_models or args.tune_epochs or args.tune_sessions != 1.0:
            raise SystemExit("--tune-timeout, --tune-epochs, --tune-sessions and --tune-models go with --tune N")
        return None
    if args.tune < 1:
        raise SystemExit("--tune takes a number of trials, at least 1")
    missing = [m for m in args.tune_models or () if m not in plan.params and m not in plan.baselines]
    if missing:
        raise SystemExit(f"--tune-models {' '.join(missing)}: not in this run (--models, or --no-baselines)")
    if chosen_on_validation(plan.params) and "dien" in (args.tune_models or TUNABLE):
        raise SystemExit("--dien-retriever auto chooses DIEN's retriever after the search: --tune cannot search "
                         "DIEN's settings on it (name its retriever, or leave dien out of --tune-models)")
    try:
        return TuningSettings(args.tune, args.tune_timeout, args.tune_seed, args.tune_metric,
                              args.tune_validation_fraction, tuple(args.tune_models or TUNABLE), plan.progress,
                              plan.device, args.tune_epochs, args.tune_sessions, args.tune_finalists)
    except ValueError as e:
        raise SystemExit(str(e)) from e


def tuned_plan(args: argparse.Namespace, plan: RetrainPlan, settings: TuningSettings, train_log: ClickLog,
               clock: StageClock) -> tuple[RetrainPlan, TuningResult]:
    """The plan with the settings a search on a validation split of `train_log` chose, and the search."""
    fixed = {model: {f.name for f in dataclasses.fields(PARAMS[model])
                     if getattr(args, f"{model}.{f.name}") is not None} for model in plan.params}
    dien = plan.params.get("dien")
    dien_retriever = (model_params(args, dien.retriever)
                      if dien and dien.retriever not in plan.params and not chosen_on_validation(plan.params) else None)
    result = tune(plan.params, plan.baselines, fixed, train_log, settings, clock, dien_retriever)
    return plan_from_args(args, result.params, result.baselines), result


def data_of(args: argparse.Namespace, name: str, train_log: ClickLog, test_log: ClickLog) -> RetrainData:
    return RetrainData(name, "validation" if args.validation else "test", train_log, test_log,
                       EncodedSplit.of(train_log, test_log))



def validation_choices(args: argparse.Namespace, plan: RetrainPlan, train_log: ClickLog, clock: StageClock
                       ) -> tuple[RetrainPlan, PipelineChoice | None, RetrieverChoice | None]:
    """What the validation split chooses, on one training of each retriever there: the serving pipeline
    (`--choose-pipeline`) and DIEN's retriever (`--dien-retriever auto`: the plan then names it)."""
    if not (args.choose_pipeline or chosen_on_validation(plan.params)):
        return plan, None, None
    validation = validation_retrievals(plan, train_log, args.tune_validation_fraction, clock)
    choice = retriever_choice = None
    if args.choose_pipeline:
        knn_params = plan.baselines.get("vsknn") or training_params("vsknn", args.config)
        choice = choose_pipeline(plan, validation, knn_params, clock)
    if chosen_on_validation(plan.params):
        retriever_choice = choose_retriever(validation, plan.params["dien"].n_candidates)
        plan = plan_from_args(args, retriever_choice.applied(plan.params), plan.baselines)
    return plan, choice, retriever_choice


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("artifact store (NEXTCLICK_ARTIFACT_DIR or NEXTCLICK_ARTIFACT_STORE_URL)")
    group.add_argument("--push", action="store_true", help="with --out: push the artifact to the store as well")
    group.add_argument("--no-promote", action="store_true",
                       help="push without promoting (the gate still runs and is recorded)")
    group.add_argument("--force-promote", action="store_true",
                       help="promote even if the quality gate refuses (logged, and recorded in the manifest)")


def staging_dir(version: str) -> Path:
    """Where an artifact is built before it is pushed."""
    return get_settings().artifact_dir / "staging" / version


def publish_trained(out: Path, test_log: ClickLog, args: argparse.Namespace) -> None:
    """Gate, push and promote the artifact retrain wrote to `out`, as the flags say."""
    if args.out is not None and not args.push:
        return
    result = gate_and_push(out, test_log.sessions_as_ids(), get_settings(), source=test_log.source,
                     force=args.force_promote, promote=not args.no_promote)
    print(result.decision.summary())
    state = "promoted: the current version" if result.pointer else "stored, not promoted"
    print(f"artifact {result.version} pushed to {result.store}: {state}")
    if args.out is None:
        shutil.rmtree(out)
    if not args.no_promote and not result.decision.promote:
        raise SystemExit(REFUSED_EXIT_STATUS)


def main(argv: list[str] | None = None) -> Path:
    """Train, evaluate, write the artifact, then gate and publish it (`publish_trained`); the artifact's path.
    Bad data (a `DataError`, an unreadable file) ends it with one line on stderr and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    trained_by = code_version()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = plan_from_args(args)
    search = tuning_settings(args, plan)
    clock = StageClock()
    with clock.stage("loading"), exits_on_data_errors(parser):
        train_log, read_test_log, name = open_logs(args)
    tuning = None
    if search:
        plan, tuning = tuned_plan(args, plan, search, train_log, clock)
    with clock.stage("loading the test log"), exits_on_data_errors(parser):
        data = data_of(args, name, train_log, read_test_log())
    print(data.summary())

    plan, choice, retriever_choice = validation_choices(args, plan, train_log, clock)
    trained = ModelTraining(plan, data.split, clock).run()
    more_rows = None if choice is None else lambda rows: choice.test_rows(trained, data.split, rows, clock)
    rows = evaluated_models(trained, data.split, clock, plan.baselines, session_end_times(train_log), plan.progress,
                            more_rows)
    for made in (choice, retriever_choice):
        if made is not None:
            print(made.summary())

    version = new_version()
    out = args.out or staging_dir(version)
    write_retrain_artifact(out, version=version, trained_by=trained_by, plan=plan, data=data, trained=trained,
                           rows=rows, clock=clock, tuning=tuning, choice=choice, retriever_choice=retriever_choice)
    print(f"\nartifact {version} written to {out}")
    publish_trained(out, data.test_log, args)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
