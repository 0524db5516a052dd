"""One retrain's models: trained (on lanes), evaluated, ready for the artifact.

`training.retrain` reads the flags into a `RetrainPlan` and the data into a `RetrainData`; `ModelTraining`
trains what the plan asks for in this order (the order of the run's stages in its metrics):

1. under stacking, DIEN's fold retriever(s) (`stacked_training_data`): first, since a warm-started serving
   GRU4Rec (`retriever_warm_start_epochs`) continues the fold one;
2. the serving retrievers, GRU4Rec then NARM (`retriever_job`), each with its test top-K;
3. DIEN (`reranker_job`) on the stacked candidates or, without stacking, on its serving retriever's top-N of
   every training prefix (that retriever is collected first);
4. the other retrievers collected (`served_retriever`), then DIEN's test re-ranking and AUC
   (`evaluated_reranker`).

Each job runs on `training.parallel_trainings.Lanes`: one lane runs them as submitted; with more, steps 1 to 3 run side
by side and their results are taken in the same order, so a k-lane run trains what a 1-lane run trains.
`evaluated_models` then ranks every model and the baselines (popularity, and the plan's `training.evaluation.baselines`:
item-kNN, V-SKNN, STAN) on the same test predictions.
Every model, the fold retrievers included, trains and is scored on the plan's `device` (`training.trainers.device`).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import save_checkpoint
from models.export import export_dien, external_data_file
from stream_app.inference.artifact_format import verify_artifact, weights_file
from stream_app.inference.scoring import Scorer
from training.data.click_log import ClickLog, EncodedSplit, Sessions
from training.data.readers import read_item_categories
from training.evaluation.baselines import BaselineParams, baseline_ranks
from training.evaluation.evaluate import (
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
from training.parallel_trainings import Lanes
from training.progress import EpochCallback, StageClock, TrainingHistory
from training.reranker_candidates import CandidateChoice, HeldOut, choose_count, held_out
from training.retriever_files import export_retriever
from training.trainers.device import CPU
from training.trainers.dien import DIENTraining, train_dien
from training.trainers.gru4rec import GRU4RecTrainer, GRU4RecTraining
from training.trainers.narm import train_narm

RETRIEVERS = ("gru4rec", "narm")  # the first stages, trained in this order

# A retriever's top-N (and the targets' ranks) for every prediction of some sessions, in click order.
RetrievalOf = Callable[[Sessions, int], Retrieval]


@dataclass(frozen=True)
class RetrainPlan:
    """What a retrain trains, and how (`training.retrain` reads it from the flags)."""

    params: dict[str, Any]  # model name -> its hyper-parameters (GRU4RecTraining, NARMTraining, DIENTraining)
    top_k: int  # items the retrievers' serving graphs return
    lanes: int = 1
    progress: bool = True  # progress bars
    retriever_artifact: Path | None = None  # GRU4Rec taken from this artifact instead of trained
    fold_retriever_params: Any = None  # DIEN's stacking: the settings its fold retriever is trained with
    baselines: dict[str, BaselineParams] = dataclasses.field(default_factory=dict)  # evaluated, not served
    device: torch.device = CPU  # where every model trains and is scored (`training.trainers.device.training_device`)


@dataclass(frozen=True)
class RetrainData:
    """The click logs a retrain read and their encoding."""

    name: str  # the data set, file or topic
    evaluated_on: str  # "test" or "validation"
    train_log: ClickLog
    test_log: ClickLog
    split: EncodedSplit

    def summary(self) -> str:
        train, test = self.split.train, self.split.test
        return (f"{self.name}: train {train.n_sessions:,} sessions / {train.n_clicks:,} clicks / "
                f"{len(self.split.item_map):,} items; test {test.n_sessions:,} sessions / {test.n_clicks:,} clicks "
                f"({test.n_dropped_clicks:,} clicks on unseen items dropped)")


@dataclass
class TrainedModel:
    name: str
    history: TrainingHistory | None  # None: taken from another artifact, not trained here
    params: Any
    ranks: np.ndarray  # test predictions, click order
    manifest_entry: dict
    export: Callable[[Path], Path]  # the serving graph
    save_weights: Callable[[Path], Path | None]  # the checkpoint training continues from (None: there is none)


def fit_retriever(name: str, params: Any, sessions: Sessions, popularity: np.ndarray, progress: bool,
                  device: torch.device = CPU, continued: GRU4RecTrainer | None = None,
                  on_epoch: EpochCallback | None = None,
                  ) -> tuple[torch.nn.Module, TrainingHistory, GRU4RecTrainer | None]:
    """A retriever trained on `sessions` (`continued`: that GRU4Rec trained `params.n_epochs` more), its history
    and (GRU4Rec) its trainer, to continue it."""
    if name == "gru4rec":
        trainer = continued or GRU4RecTrainer(popularity, params, device)
        return trainer.fit(sessions, params.n_epochs, progress, on_epoch), trainer.history, trainer
    model, history = train_narm(sessions, popularity, params, progress=progress, on_epoch=on_epoch, device=device)
    return model, history, None


def retriever_scores(model: torch.nn.Module, params: Any) -> ScoreBatches:
    """How a retriever scores the predictions of any sessions: step by step (GRU4Rec) or prefix by prefix (NARM)."""
    if isinstance(params, GRU4RecTraining):
        return step_model_scores(model)
    return prefix_model_scores(model, params.max_len)


def retriever_job(clock: StageClock, name: str, params: Any, split: EncodedSplit, top_k: int, progress: bool,
                  device: torch.device, continued: GRU4RecTrainer | None = None,
                  ) -> tuple[torch.nn.Module, TrainingHistory, Retrieval]:
    """A lane's work for a retriever: trained on every training session, then its top-K for the test
    predictions (scored once: its own row of the table and the re-ranker's test candidates both come from it)."""
    stage = f"{name} training" + (" (continuing dien's fold retriever)" if continued else "")
    with clock.stage(stage):
        model, history, _ = fit_retriever(name, params, split.train, split.popularity, progress, device, continued)
    with clock.stage(f"{name} test top-{top_k}"):
        test = retrieve(retriever_scores(model, params), split.test, top_k)
    return model, history, test


def served_retriever(name: str, params: Any, model: torch.nn.Module, history: TrainingHistory, test: Retrieval,
                     top_k: int, n_items: int) -> tuple[TrainedModel, RetrievalOf]:
    """A trained retriever as the artifact holds it, and how it retrieves for any sessions."""
    entry = {"layers": model.n_layers, "hidden_size": model.hidden_size} if name == "gru4rec" else {
        "max_len": params.max_len}
    entry |= {"file": f"{name}.onnx", "kind": "retriever", "n_items": n_items, "top_k": top_k}

    def export(path: Path) -> Path:
        entry.update(export_retriever(name, model, path, top_k))
        return path
    retrieval_of = partial(retrieve, retriever_scores(model, params))
    trained = TrainedModel(name, history, params, test.ranks, entry, export,
                           partial(save_checkpoint, model, optimiser=history.optimiser_state))
    return trained, retrieval_of


def published_retriever(artifact: Path, split: EncodedSplit) -> tuple[TrainedModel, RetrievalOf, Retrieval]:
    """The GRU4Rec of an existing artifact, through its serving graph: DIEN retrained on a retriever that stays."""
    scorer = Scorer(artifact, intra_op_threads=torch.get_num_threads())
    if scorer.item_ids != [str(i) for i in split.item_map.ids]:
        raise SystemExit(f"{artifact} was trained on other items than this data: its retriever cannot be reused")
    source = artifact / scorer.name

    def retrieval_of(sessions: Sessions, n: int) -> Retrieval:
        return graph_retrieval(scorer, sessions).best(n)

    entry = verify_artifact(artifact)["models"][scorer.name]
    files = [entry["file"], *([entry["query_file"], entry["index"]["file"]] if "index" in entry else [])]
    files += [data.name for graph in files if (data := external_data_file(source.with_name(graph))).is_file()]

    def export(path: Path) -> Path:
        for name in files:  # the graph, and its query graph and index when the artifact has them, and their data
            shutil.copyfile(source.with_name(name), path.with_name(name))
        return path
    test = graph_retrieval(scorer, split.test)
    weights = source.with_name(weights_file(entry))

    def copy_weights(path: Path) -> Path | None:
        return Path(shutil.copyfile(weights, path)) if weights.is_file() else None

    trained = TrainedModel(scorer.name, None, {"artifact": str(artifact), "version": scorer.version},
                           test.ranks, entry, export, copy_weights)
    return trained, retrieval_of, test


@dataclass
class StackedData:
    """What DIEN trains on under stacking: sessions, their retriever's top-N, and the last fold's retriever."""

    sessions: Sessions
    retrieved: Retrieval
    fold_trainer: GRU4RecTrainer | None  # with `retriever_warm_start_epochs`: the one the serving GRU4Rec continues


def stacked_training_data(params: DIENTraining, retriever_params: Any, split: EncodedSplit,
                          progress: bool, device: torch.device = CPU) -> StackedData:
    """The sessions DIEN trains on and the retriever's top-N for each of their prefixes.

    A retriever scoring the prefixes it was trained on is far more confident than on new sessions
    (docs/experiments.md, Stacking), and DIEN trained there learns to correct the wrong retriever. So
    (stacking, `holdout_fraction` f > 0) DIEN trains on the latest f of the training sessions, cut into
    `holdout_folds` k consecutive folds; each
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
        model, _, trainer = fit_retriever(params.retriever, fold_params, seen, split.popularity, progress, device)
        retrievals.append(retrieve(retriever_scores(model, fold_params), held, n))
    # the fold retriever (model, Adagrad state: hundreds of MB on Diginetica) is kept only to be continued
    kept = trainer if params.retriever_warm_start_epochs else None
    return StackedData(train.split_at(first_held)[1], Retrieval.concat(retrievals), kept)


def stacking_job(clock: StageClock, params: DIENTraining, retriever_params: Any, split: EncodedSplit,
                 progress: bool, device: torch.device) -> StackedData:
    with clock.stage(f"dien's training candidates (fold {params.retriever} training included)"):
        return stacked_training_data(params, retriever_params, split, progress, device)


def reranker_inputs(params: DIENTraining, stacked: StackedData | None, retrieval_of: RetrievalOf | None,
                    split: EncodedSplit, clock: StageClock) -> tuple[Sessions, Retrieval]:
    """The sessions DIEN trains on and their retriever's top-N: stacked, or without stacking every training
    prefix's top-N of the serving retriever."""
    if stacked:
        return stacked.sessions, stacked.retrieved
    with clock.stage(f"dien's training candidates ({params.retriever} on every training prefix)"):
        return split.train, retrieval_of(split.train, params.n_candidates)


def reranker_job(clock: StageClock, params: DIENTraining, sessions: Sessions, retrieved: Retrieval,
                 split: EncodedSplit, progress: bool, device: torch.device) -> tuple[torch.nn.Module, TrainingHistory]:
    categories = read_item_categories(params.categories, split.item_map) if params.categories else None
    with clock.stage("dien training"):
        return train_dien(sessions, split.popularity, params, retrieved, categories, progress=progress, device=device)


def prior_weight_of(params: DIENTraining, model: torch.nn.Module) -> float | None:
    return model.prior_weight.item() if params.residual else None


def evaluated_reranker(params: DIENTraining, model: torch.nn.Module, history: TrainingHistory, choice: CandidateChoice,
                       sessions: dict[str, int], test_retrieval: Retrieval, split: EncodedSplit,
                       clock: StageClock) -> tuple[TrainedModel, dict]:
    """DIEN's two-stage ranks and figures on the test set, at the served count `choice` and at all N; `sessions`:
    how many DIEN trained on and validated on."""
    n = params.n_candidates
    test_retrieval = test_retrieval.best(n)
    prior_weight = prior_weight_of(params, model)
    with clock.stage(f"dien test re-ranking of the top-{n}"):
        ranks_at_n = reranked_ranks(model, params.max_len, split.test, test_retrieval, prior_weight)
    ranks = ranks_at_n
    if choice.count != n:
        with clock.stage(f"dien test re-ranking of the top-{choice.count}"):
            ranks = reranked_ranks(model, params.max_len, split.test, test_retrieval.best(choice.count), prior_weight)
    auc = None  # no test clicks: a prequential replay's first version, trained on all it is given
    if split.test.n_clicks > split.test.n_sessions:
        with clock.stage("dien AUC"):
            auc = pairwise_auc(model, params.max_len, split.test, split.popularity, params.sample_alpha,
                               seed=params.seed)
    at_n = RankingMetrics.from_ranks(f"top {n}", ranks_at_n, 0, (20,))
    figures = {"retriever": params.retriever, "n_candidates": n, "prior_weight": prior_weight,
               "dien_training_sessions": sessions["training"], "validation_sessions": sessions["validation"],
               "holdout_fraction": params.holdout_fraction,
               f"retriever_recall@{n}": float((test_retrieval.ranks <= n).mean()) if len(ranks) else 0.0,
               "dien_auc": auc, **choice.to_dict(),
               f"test_at_{n}": {"recall@20": at_n.recall[20], "mrr@20": at_n.mrr[20]}}
    entry = {"file": "dien.onnx", "kind": "reranker", "retriever": params.retriever, "n_candidates": n,
             "serving_candidates": choice.count, "prior_weight": prior_weight, "max_len": params.max_len,
             "n_items": len(split.popularity)}
    trained = TrainedModel(f"{params.retriever}->dien", history, params, ranks, entry,
                           lambda path: export_dien(model, path), partial(save_checkpoint, model))
    return trained, figures


@dataclass
class TrainedModels:
    """A retrain's models, in the order they were collected, DIEN's two-stage figures ({} without DIEN), and each
    retriever's top-K of the test predictions (what a blend with V-SKNN fuses: `training.pipeline_choice`)."""

    models: dict[str, TrainedModel]
    two_stage: dict
    retrievals: dict[str, Retrieval] = dataclasses.field(default_factory=dict)


class ModelTraining:
    """Trains a `RetrainPlan` on a split, on lanes, in the order of the module docstring."""

    def __init__(self, plan: RetrainPlan, split: EncodedSplit, clock: StageClock):
        self.plan, self.split, self.clock = plan, split, clock
        self.dien: DIENTraining | None = plan.params.get("dien")
        self.trained: dict[str, TrainedModel] = {}
        self.retrievers: dict[str, tuple[RetrievalOf, Retrieval]] = {}  # how each retrieves, its test top-K
        self.training: dict[str, Future] = {}  # retrievers submitted and not yet collected
        self.dien_data: HeldOut | None = None  # the sessions DIEN trains on, and those held out to validate it

    def run(self) -> TrainedModels:
        if self.plan.retriever_artifact:
            self.use_published_retriever(self.plan.retriever_artifact)
        with Lanes(self.plan.lanes, torch.get_num_threads(), self.clock) as lanes:
            stacking = self.submit_stacking(lanes)
            self.submit_retrievers(lanes, stacking)
            reranking = self.submit_reranker(lanes, stacking) if self.dien else None
            for name in list(self.training):
                self.collect(lanes, name)
            two_stage = self.evaluate_reranker(lanes, reranking) if reranking is not None else {}
        return TrainedModels(self.trained, two_stage, {name: test for name, (_, test) in self.retrievers.items()})

    def use_published_retriever(self, artifact: Path) -> None:
        with self.clock.stage(f"gru4rec of {artifact}: its test top-{self.plan.top_k}"):
            self.trained["gru4rec"], retrieval_of, test_retrieval = published_retriever(artifact, self.split)
        self.retrievers["gru4rec"] = (retrieval_of, test_retrieval)

    def submit_stacking(self, lanes: Lanes) -> Future | None:
        """DIEN's training candidates under stacking (its fold retrievers), or None without stacking."""
        dien = self.dien
        if not (dien and dien.holdout_fraction):
            return None
        print(f"\ndien's training candidates: {dien.retriever}'s top {dien.n_candidates} under stacking")
        return lanes.submit(f"{dien.retriever} (dien's fold)", stacking_job, dien, self.plan.fold_retriever_params,
                            self.split, self.plan.progress, self.plan.device)

    def submit_retrievers(self, lanes: Lanes, stacking: Future | None) -> None:
        dien, params = self.dien, self.plan.params
        for name in (m for m in RETRIEVERS if m in params):
            continued = None
            retriever_params = params[name]
            if stacking and dien.retriever_warm_start_epochs and name == dien.retriever:
                continued = lanes.result(stacking).fold_trainer  # one lane only (validated): done by now
                retriever_params = dataclasses.replace(retriever_params, n_epochs=dien.retriever_warm_start_epochs)
            print(f"\n{name}" + (f": dien's fold retriever, {dien.retriever_warm_start_epochs} more epochs on every "
                                 "training session" if continued else ""))
            self.training[name] = lanes.submit(name, retriever_job, name, retriever_params, self.split,
                                               self.plan.top_k, self.plan.progress, self.plan.device, continued)

    def collect(self, lanes: Lanes, name: str) -> None:
        """A submitted retriever's result, as the artifact holds it."""
        model, history, test_retrieval = lanes.result(self.training.pop(name))
        self.trained[name], retrieval_of = served_retriever(name, self.plan.params[name], model, history,
                                                            test_retrieval, self.plan.top_k, len(self.split.popularity))
        self.retrievers[name] = (retrieval_of, test_retrieval)

    def submit_reranker(self, lanes: Lanes, stacking: Future | None) -> Future:
        dien = self.dien
        print(f"\ndien, re-ranking {dien.retriever}'s top {dien.n_candidates}")
        stacked = lanes.result(stacking) if stacking else None
        if not stacked and dien.retriever in self.training:
            self.collect(lanes, dien.retriever)  # its top-N of every training prefix is DIEN's training data
        retrieval_of = self.retrievers[dien.retriever][0] if dien.retriever in self.retrievers else None
        sessions, retrieved = reranker_inputs(dien, stacked, retrieval_of, self.split, self.clock)
        # validation sessions only under stacking: without it, the retriever saw every training session
        self.dien_data = held_out(dien, sessions, retrieved) if stacked else HeldOut(sessions, retrieved)
        return lanes.submit("dien", reranker_job, dien, self.dien_data.sessions, self.dien_data.retrieved, self.split,
                            self.plan.progress, self.plan.device)

    def evaluate_reranker(self, lanes: Lanes, reranking: Future) -> dict:
        """The served count chosen on the validation sessions (if any) and, with `refit`, DIEN trained again on every
        stacked session, those included: the count carries over, and no session is lost to choosing it."""
        dien, data = self.dien, self.dien_data
        model, history = lanes.result(reranking)
        with self.clock.stage("dien's served candidates on validation"):
            choice = choose_count(model, dien, data, prior_weight_of(dien, model))
        sessions = {"training": data.sessions.n_sessions,
                    "validation": 0 if data.validation is None else data.validation.n_sessions}
        if choice.figures:
            print(choice.describe())
        if data.validation is not None and dien.refit:
            print("dien trained again on every stacked session, the validation sessions included")
            whole = Sessions.concat([data.sessions, data.validation])
            retrieved = Retrieval.concat([data.retrieved, data.validation_retrieved])
            model, history = lanes.result(lanes.submit("dien", reranker_job, dien, whole, retrieved, self.split,
                                                       self.plan.progress, self.plan.device))
            sessions["training"] = whole.n_sessions
        self.trained["dien"], two_stage = evaluated_reranker(dien, model, history, choice, sessions,
                                                             self.retrievers[dien.retriever][1], self.split, self.clock)
        return two_stage


def evaluated_models(trained: TrainedModels, split: EncodedSplit, clock: StageClock,
                     baselines: dict[str, BaselineParams] | None = None, train_times: np.ndarray | None = None,
                     progress: bool = False,
                     more_rows: Callable[[list[RankingMetrics]], list[RankingMetrics]] | None = None,
                     ) -> list[RankingMetrics]:
    """Every model's row and the baselines' on the same test predictions, printed as a table (with DIEN's
    two-stage figures): popularity, then `baselines` (`training.evaluation.baselines`; `train_times`: each
    training session's last click, for STAN's time decay), then `more_rows(the rows so far)` (a blend's)."""
    rows: list[RankingMetrics] = []
    with clock.stage("evaluation"):
        for t in trained.models.values():
            model_row, popularity_row = with_popularity_baseline(t.name, t.ranks, split.popularity, split.test)
            rows.append(model_row)
        rows.append(popularity_row)
    for name, params in (baselines or {}).items():
        with clock.stage(f"{name} baseline"):
            ranks = baseline_ranks(name, params, split, train_times=train_times, progress=progress)
        rows.append(RankingMetrics.from_ranks(name, ranks, split.test.n_dropped_clicks))
    if more_rows is not None:
        rows += more_rows(rows)
    print()
    print(format_table(rows))
    two_stage = trained.two_stage
    if two_stage and two_stage["dien_auc"] is not None:
        n = two_stage["n_candidates"]
        print(f"\n{two_stage['retriever']} Recall@{n} (the re-ranker's ceiling): "
              f"{two_stage[f'retriever_recall@{n}']:.4f}; DIEN AUC (held-out next clicks vs popularity-sampled "
              f"items): {two_stage['dien_auc']:.4f}")
    return rows
