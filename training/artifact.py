"""Building a retrain's artifact: each model's serving graph and training curve, a hyper-parameter search's
record, the metrics record (`metrics.json`), the data files and the manifest that seals them.

The files and their format are `stream_app.inference.artifact_format`'s (shared with serving). The metrics
record also holds what the artifact serves (`served`): every pipeline it can serve, replayed through the
worker's own code on the test sessions, keeping and excluding the session's clicked items, and the better
policy (docs/serving.md, exclusion policy). That needs the sealed artifact, so the record is written twice.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from stream_app.inference.artifact_format import (
    CONFIG,
    ITEM_IDS,
    METRICS,
    POPULARITY,
    REPLAY,
    weights_file,
    write_json,
    write_manifest,
)
from stream_app.inference.served_quality import format_served, served_evaluation
from stream_app.settings import REPO_ROOT, get_settings
from training.data.click_log import ClickLog
from training.evaluation.evaluate import CUTOFFS, RankingMetrics
from training.evaluation.plots import plot_training_curve
from training.model_training import RetrainData, RetrainPlan, TrainedModels
from training.pipeline_choice import PipelineChoice
from training.progress import StageClock, TrainingHistory
from training.retriever_choice import RetrieverChoice
from training.tuning.search import TuningResult

REPLAY_KEEP = 20_000  # training sessions an artifact keeps for incremental updates to replay
PROTOCOL = ("next-item prediction at every click of every test session; hidden state zero at each test session "
            "start; full-catalogue ranking; rank = #items scoring >= target (conservative ties); clicks on items "
            "unseen in training dropped and counted; two-stage: the retriever's top-N re-ranked, every other item "
            "after it in retrieval order")


def epochs_record(history: TrainingHistory) -> list[dict]:
    return [dataclasses.asdict(e) | {"events_per_second": e.events_per_second} for e in history.epochs]


def metrics_record(data: RetrainData, trained: TrainedModels, rows: list[RankingMetrics], clock: StageClock,
                   plan: RetrainPlan) -> dict:
    """metrics.json: the evaluation's figures, the run's stages and epochs, and the data it ran on."""
    train_log, train, test = data.train_log, data.split.train, data.split.test
    return {
        "dataset": data.name,
        "split": data.evaluated_on,
        "protocol": PROTOCOL,
        "cutoffs": list(CUTOFFS),
        "results": {m.name: m.to_dict() for m in rows},
        "two_stage": trained.two_stage,
        "stages": clock.stages,
        "training": {name: {"epochs": epochs_record(t.history), "matmul_precision": t.history.matmul_precision}
                     for name, t in trained.models.items() if t.history}
                    | {"threads": torch.get_num_threads(), "lanes": plan.lanes, "device": str(plan.device)},
        "data": {
            "train_source": train_log.source, "test_source": data.test_log.source,
            "train_sessions": train.n_sessions, "train_clicks": train.n_clicks,
            "test_sessions": test.n_sessions, "test_clicks": test.n_clicks,
            "test_dropped_clicks": test.n_dropped_clicks,
            "train_time_range": train_log.time_range(),
        },
    }


def config_record(plan: RetrainPlan, trained: TrainedModels) -> dict:
    """config.json: every trained model's hyper-parameters, the serving top-K, a reused retriever's source, and
    the baselines' settings (evaluated, not served)."""
    return ({name: p.to_dict() for name, p in plan.params.items()} | {"top_k": plan.top_k}
            | ({"gru4rec": trained.models["gru4rec"].params} if plan.retriever_artifact else {})
            | {"baselines": {name: dataclasses.asdict(p) for name, p in plan.baselines.items()}})


def merged_replay(parent: dict, new: list[list[str]], keep: int, rng: np.random.Generator) -> dict:
    """A uniform sample of everything the lineage trained on: the parent's sample stands for `seen` sessions."""
    seen = parent["seen"] + len(new)
    from_parent = min(len(parent["sessions"]), round(keep * parent["seen"] / seen)) if seen else 0
    from_new = min(len(new), keep - from_parent)
    kept = [parent["sessions"][i] for i in sorted(rng.choice(len(parent["sessions"]), from_parent, replace=False))]
    kept += [new[i] for i in sorted(rng.choice(len(new), from_new, replace=False))]
    return {"seen": seen, "sessions": kept}


def replay_record(log: ClickLog, keep: int, seed: int = 0) -> dict:
    """A full retrain's replay sample: up to `keep` of its training sessions, uniformly."""
    return merged_replay({"seen": 0, "sessions": []}, log.sessions_as_ids(), keep, np.random.default_rng(seed))


def training_cutoff(log: ClickLog) -> dict:
    """Where a full retrain's clicks end, for the incremental updates after it: the last click's time (None
    when the log has no times: then every click of the clicks topic is after it)."""
    span = log.time_range()
    return {"until": None if span is None else span[1]}


def code_version() -> str:
    """The git commit the trainer ran from (with '-dirty' when the tree had changes), or 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def new_version() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def write_artifact_metadata(directory: Path, *, version: str, trained_by: str, item_ids: np.ndarray,
                            popularity: np.ndarray, config: dict, metrics: dict, models: dict[str, dict],
                            lineage: dict | None = None, serving_pipeline: dict | None = None) -> Path:
    """Write the data files and the manifest around model files already saved in `directory`.
    `trained_by` is the `code_version()` read when training started (the tree may change meanwhile)."""
    write_json(directory / ITEM_IDS, [str(i) for i in item_ids])
    np.save(directory / POPULARITY, np.asarray(popularity, dtype=np.int64))
    write_json(directory / CONFIG, config)
    write_json(directory / METRICS, metrics)
    return write_manifest(directory, version=version, code_version=trained_by, models=models, lineage=lineage,
                          serving_pipeline=serving_pipeline)


def write_retrain_artifact(out: Path, *, version: str, trained_by: str, plan: RetrainPlan, data: RetrainData,
                           trained: TrainedModels, rows: list[RankingMetrics], clock: StageClock,
                           tuning: TuningResult | None = None, choice: PipelineChoice | None = None,
                           retriever_choice: RetrieverChoice | None = None) -> Path:
    """The artifact of a retrain in `out` (created if needed); its manifest's path. `choice`: the serving pipeline
    chosen on validation, recorded in the manifest and, with its figures, in the metrics. `retriever_choice`:
    DIEN's retriever chosen on validation, in the metrics, and its two-stage pipeline the manifest's serving
    pipeline where no `choice` names one (the pipeline a user of `auto` serves, whichever retriever won)."""
    out.mkdir(parents=True, exist_ok=True)
    serving = choice.chosen if choice else retriever_choice.pipeline if retriever_choice else None
    write_json(out / REPLAY, replay_record(data.train_log, REPLAY_KEEP))
    with clock.stage("ONNX exports and training curves"):
        for name, t in trained.models.items():
            t.export(out / t.manifest_entry["file"])
            if t.save_weights(out / weights_file(t.manifest_entry)) is not None:
                t.manifest_entry["weights"] = weights_file(t.manifest_entry)
            if t.history is not None:
                plot_training_curve(t.history, out / f"{name}_training_curve.png", f"{t.name} on {data.name}")
        if tuning is not None:
            tuning.write(out, data.name)

    def sealed(**served: dict) -> Path:
        return write_artifact_metadata(
            out, version=version, trained_by=trained_by, item_ids=data.split.item_map.ids,
            popularity=data.split.popularity, config=config_record(plan, trained),
            metrics=metrics_record(data, trained, rows, clock, plan) | served
                    | ({} if choice is None else {"pipeline_choice": choice.record()})
                    | ({} if retriever_choice is None else {"dien_retriever_choice": retriever_choice.record()}),
            models={name: t.manifest_entry for name, t in trained.models.items()},
            lineage={"kind": "full", "parent": None, "clicks": training_cutoff(data.train_log)},
            serving_pipeline=None if serving is None else serving.to_dict(),
        )

    manifest = json.loads(sealed().read_text())
    with clock.stage("served figures, keeping and excluding clicked items"):
        served = served_evaluation(out, manifest, data.test_log.sessions_as_ids(), get_settings())
    print("\n" + format_served(served))
    return sealed(served=served)
