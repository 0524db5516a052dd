"""Hyper-parameter search (`python -m training.retrain --tune N`): optuna trials on a validation split carved from
the training log alone (`validation_split`); `training.retrain` reads the test log only after `tune` returns.

Each trial trains on the rest with settings from `training.tuning.search_spaces` (trial 0: the run's own
settings, where the space holds them) at the trial budget (`--tune-epochs`, `--tune-sessions`) and is scored on
the held-out sessions with the models' protocol (`training.evaluation.evaluate`); GRU4Rec, NARM and DIEN report
after every epoch to optuna's MedianPruner, a trial's value is its last epoch's score, and a diverging trial
(`TrainingDiverged`) fails alone. Proposals come from optuna's TPESampler seeded with `seed`. A final round
(`run_final_round`, `--tune-finalists K`) trains the K best trials and trial 0 again at the full budget and the
best of them there is chosen (none when trial 0 leads). Why the split, the objective (MRR@20, as the official
GRU4Rec example's `paropt.py -pm mrr -m 20`), trial 0 and the final round: docs/training-on-your-own-clicks.md,
section 3.

Order: the retrievers (GRU4Rec, NARM), then DIEN, whose trials re-rank its retriever's top-N for the held-out
sessions: that retriever (with its tuned settings when it was tuned) and DIEN's training candidates (stacking's
fold retriever(s) included, `training.model_training.reranker_inputs`) are trained once on the rest, then each trial
trains one DIEN (n_members = 1; the final training trains `n_members` of the best settings). Then the
baselines (item-kNN, V-SKNN, STAN), one fit and one scoring per trial. `timeout` bounds each model's search
(optuna checks it between trials: a trial under way ends first). What is kept, into the artifact:
`TuningResult.write`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from training.data.click_log import ClickLog, EncodedSplit
from training.data.readers import read_item_categories
from training.evaluation.baselines import BASELINES, BaselineParams, TrainIndex, ranks_of, session_end_times
from training.evaluation.evaluate import CUTOFFS, RankingMetrics, reranked_ranks, retrieve
from training.evaluation.plots import plot_search
from training.model_training import RETRIEVERS, fit_retriever, reranker_inputs, retriever_scores, stacked_training_data
from training.progress import StageClock, TrainingDiverged
from training.trainers.device import CPU
from training.trainers.dien import DIENTraining, train_dien
from training.tuning.search_spaces import SEARCH_SPACES, describe, starting_point, suggest

TUNABLE = (*RETRIEVERS, "dien", *BASELINES)  # the order of the searches
METRICS = tuple(f"{kind}@{k}" for kind in ("mrr", "recall") for k in CUTOFFS)


@dataclass(frozen=True)
class TuningSettings:
    n_trials: int
    timeout: float | None = None  # seconds, each model's search
    seed: int = 0
    metric: str = "mrr@20"  # one of METRICS
    validation_fraction: float = 0.1
    models: tuple[str, ...] | None = None  # which to tune; None: every model and baseline of the run
    progress: bool = True
    device: torch.device = CPU  # where the trials train and are scored, like the final training
    trial_epochs: int | None = None  # each trial's epochs (None: the model's own n_epochs)
    trial_sessions: float = 1.0  # each trial trains on this latest fraction of the split's training sessions
    finalists: int = 1  # with a smaller trial budget: the best this many trials (and trial 0) train again in full

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not 0.0 < self.trial_sessions <= 1.0:
            raise ValueError(f"trial_sessions must be in (0, 1], got {self.trial_sessions}")
        if self.trial_epochs is not None and self.trial_epochs < 1:
            raise ValueError(f"trial_epochs must be at least 1, got {self.trial_epochs}")
        if self.finalists < 0:
            raise ValueError(f"finalists must be at least 0, got {self.finalists}")

    def in_full(self) -> TuningSettings:
        """These settings at the final training's budget: the model's own epochs on every training session."""
        return dataclasses.replace(self, trial_epochs=None, trial_sessions=1.0)

    def budget_below_full(self, base: Any) -> bool:
        epochs = getattr(base, "n_epochs", None)
        return self.trial_sessions < 1.0 or bool(self.trial_epochs and epochs and self.trial_epochs < epochs)

    def score(self, ranks: np.ndarray) -> float:
        kind, k = self.metric.split("@")
        metrics = RankingMetrics.from_ranks(kind, ranks, 0, cutoffs=(int(k),))
        return (metrics.mrr if kind == "mrr" else metrics.recall)[int(k)]


def validation_split(log: ClickLog, fraction: float, flag: str = "--tune-validation-fraction"
                     ) -> tuple[ClickLog, ClickLog, dict]:
    """(the rest, the held-out sessions, how they were chosen): the latest `fraction` of the training sessions.
    With timestamps, by time: the sessions whose last click comes after a cut time (chosen so that `fraction` of
    them do), as GRU4Rec's preprocessing holds out its test days; without (SR-GNN pickles), the last `fraction`
    in file order. Held-out clicks on items the rest never saw are dropped, as on the test. `flag`: the setting
    that asked for `fraction`, named by the error where the log is too small for it."""
    offsets = log.session_offsets()
    n = len(offsets) - 1
    n_held = max(1, round(fraction * n))
    if log.times is not None:
        ends = log.times[offsets[1:] - 1]
        cut = float(np.sort(ends)[max(n - n_held - 1, 0)])
        held = ends > cut
        how = {"by": "time", "held_out": "sessions whose last click is after the cut",
               "cut": datetime.fromtimestamp(cut, UTC).isoformat()}
    else:
        held = np.arange(n) >= n - n_held
        how = {"by": "order", "held_out": "the last sessions of the training log"}
    if held.all() or not held.any():
        raise SystemExit(f"{log.source}: {n:,} training sessions cannot give a validation split of "
                         f"{fraction:.0%} with sessions on both sides; give more data or another {flag}")
    rest, held_out = log.take_sessions(~held), log.take_sessions(held)
    return rest, held_out, how | {"fraction": fraction, "train_sessions": rest.n_sessions,
                                  "validation_sessions": held_out.n_sessions}


Objective = Callable[[optuna.Trial], float]


class Trials:
    """What every model's objective shares: the trial's settings of the model's space, and the per-epoch report
    (`every_epoch`; False: the last epoch only, where nothing is pruned: scoring every epoch costs trial time)."""

    def __init__(self, name: str, base: Any, fixed: set[str], settings: TuningSettings, has_times: bool,
                 every_epoch: bool = True):
        self.name, self.base, self.fixed, self.settings, self.every_epoch = name, base, fixed, settings, every_epoch
        self.space = SEARCH_SPACES[name]
        self.context = dataclasses.asdict(base) | {"timestamps": has_times}

    def starting_point(self) -> dict | None:
        """The trial that trains the base settings (those the run would train without a search), if the space
        holds them."""
        return starting_point(self.space, self.fixed, self.context)

    def params(self, trial: optuna.Trial, **overrides) -> Any:
        """The base settings with the trial's (kept as the trial's "settings": what a final training applies),
        trained for the search's epochs per trial."""
        chosen = suggest(trial, self.space, self.fixed, self.context)
        trial.set_user_attr("settings", chosen)
        if self.settings.trial_epochs and hasattr(self.base, "n_epochs"):
            overrides.setdefault("n_epochs", self.settings.trial_epochs)
        return dataclasses.replace(self.base, **chosen, **overrides)

    def epoch_reporter(self, trial: optuna.Trial, scores: list[float], ranks_of_model: Callable[[Any], np.ndarray],
                       last_epoch: int) -> Callable[[int, Any], None]:
        """The trainers' `on_epoch`: score the model, report it, stop the trial if the pruner says so."""
        def on_epoch(epoch: int, model: Any) -> None:
            if not self.every_epoch and epoch < last_epoch:
                return
            scores.append(self.settings.score(ranks_of_model(model)))
            trial.report(scores[-1], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{self.settings.metric} {scores[-1]:.4f} after epoch {epoch}")
        return on_epoch

    def best(self, search: ModelSearch) -> Any:
        return dataclasses.replace(self.base, **search.chosen().user_attrs["settings"])


def retriever_objective(trials: Trials, split: EncodedSplit) -> Objective:
    def objective(trial: optuna.Trial) -> float:
        params = trials.params(trial)
        scores: list[float] = []
        ranks = lambda model: retrieve(retriever_scores(model, params), split.test).ranks
        fit_retriever(trials.name, params, split.train, split.popularity, trials.settings.progress,
                      trials.settings.device, on_epoch=trials.epoch_reporter(trial, scores, ranks, params.n_epochs))
        return scores[-1]
    return objective


def reranker_objective(trials: Trials, retriever_params: Any, split: EncodedSplit, clock: StageClock) -> Objective:
    """DIEN's trials, on its retriever's candidates computed once here (module docstring)."""
    base: DIENTraining = dataclasses.replace(trials.base, n_members=1)
    progress, n, device = trials.settings.progress, base.n_candidates, trials.settings.device
    stacked = (stacked_training_data(base, retriever_params, split, progress, device) if base.holdout_fraction
               else None)
    with clock.stage(f"tuning dien: its retriever {base.retriever} on the validation split's training part"):
        model, _, _ = fit_retriever(base.retriever, retriever_params, split.train, split.popularity, progress,
                                    device)
    retrieval_of = partial(retrieve, retriever_scores(model, retriever_params))
    validation = retrieval_of(split.test, n)
    sessions, retrieved = reranker_inputs(base, stacked, retrieval_of, split, clock)
    categories = read_item_categories(base.categories, split.item_map) if base.categories else None

    def objective(trial: optuna.Trial) -> float:
        params = trials.params(trial, n_members=1)
        scores: list[float] = []
        ranks = lambda dien: reranked_ranks(dien, params.max_len, split.test, validation,
                                            dien.prior_weight.item() if params.residual else None)
        train_dien(sessions, split.popularity, params, retrieved, categories, progress,
                   on_epoch=trials.epoch_reporter(trial, scores, ranks, params.n_epochs), device=device)
        return scores[-1]
    return objective


def baseline_objective(trials: Trials, split: EncodedSplit, train_times: np.ndarray | None) -> Objective:
    index = TrainIndex.of(split.train, len(split.item_map), train_times)

    def objective(trial: optuna.Trial) -> float:
        model = BASELINES[trials.name].build(index, trials.params(trial), False)
        return trials.settings.score(ranks_of(model, split.test, trials.settings.progress, desc=trials.name))
    return objective


def run_study(name: str, objective: Objective, settings: TuningSettings, start: dict | None = None
              ) -> optuna.Study:
    """`start`: the first trial's settings (the run's own: a search then never ends below them on validation)."""
    study = optuna.create_study(study_name=name, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=settings.seed),
                                pruner=optuna.pruners.MedianPruner())
    if start is not None:
        study.enqueue_trial(start)
    study.optimize(objective, n_trials=settings.n_trials, timeout=settings.timeout, catch=(TrainingDiverged,),
                   show_progress_bar=settings.progress, gc_after_trial=True)
    return completed(study, "raise --tune or --tune-timeout, or fix the settings its trials failed on")


def completed(study: optuna.Study, advice: str) -> optuna.Study:
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise SystemExit(f"the search of {study.study_name} completed no trial ({len(study.trials)} tried): {advice}"
                         " (see above)")
    return study


def finalists_of(study: optuna.Study, n: int, own_first: bool) -> list[optuna.trial.FrozenTrial]:
    """The `n` best complete trials, and trial 0 when it trained the run's own settings (`own_first`) and
    completed."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = sorted(done, key=lambda t: t.value, reverse=True)[:n]
    own = [t for t in done if own_first and t.number == 0 and t.number not in {b.number for b in best}]
    return best + own


def run_final_round(name: str, objective: Objective, finalists: list[optuna.trial.FrozenTrial],
                    settings: TuningSettings) -> optuna.Study:
    """Train each finalist's settings again at the full budget and score it on the validation split: settings
    that win a short budget (a high learning rate, a small model) need not win the full one."""
    study = optuna.create_study(study_name=f"{name} in full", direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=settings.seed),
                                pruner=optuna.pruners.NopPruner())
    for trial in finalists:
        study.enqueue_trial(trial.params, user_attrs={"search_trial": trial.number, "search_value": trial.value})
    study.optimize(objective, n_trials=len(finalists), catch=(TrainingDiverged,),
                   show_progress_bar=settings.progress, gc_after_trial=True)
    return completed(study, "every finalist failed at the full budget")


@dataclass
class ModelSearch:
    name: str
    study: optuna.Study
    space: list[str]
    seconds: float
    final_round: optuna.Study | None = None  # the finalists at the full budget, which chose (`run_final_round`)

    def chosen(self) -> optuna.trial.FrozenTrial:
        return (self.final_round or self.study).best_trial

    def record(self, metric: str) -> dict:
        best = self.chosen()
        states = [t.state.name.lower() for t in self.study.trials]
        record = {"metric": metric, "best_value": best.value, "best_trial": best.user_attrs.get("search_trial",
                  best.number), "best_params": best.params, "best_settings": best.user_attrs["settings"],
                  "space": self.space, "trials": len(states), **{s: states.count(s) for s in sorted(set(states))},
                  "seconds": self.seconds}
        if self.final_round:
            record["chosen_by"] = "the finalists' validation score at the full budget"
            record["finalists"] = [{"trial": t.user_attrs["search_trial"], "search_value": t.user_attrs[
                "search_value"], "full_budget_value": t.value, "state": t.state.name.lower()}
                for t in self.final_round.trials]
        return record


@dataclass
class TuningResult:
    """The searches and the settings they chose: `params` and `baselines` are what the final training uses."""

    settings: TuningSettings
    validation: dict
    searches: dict[str, ModelSearch]
    params: dict[str, Any]
    baselines: dict[str, BaselineParams]

    def record(self) -> dict:
        settings = dataclasses.asdict(self.settings) | {"device": str(self.settings.device)}
        return {"settings": settings, "validation": self.validation,
                "models": {name: s.record(self.settings.metric) for name, s in self.searches.items()}}

    def write(self, out: Path, data_name: str) -> None:
        (out / "tuning.json").write_text(json.dumps(self.record(), indent=2, sort_keys=True) + "\n")
        for name, search in self.searches.items():
            search.study.trials_dataframe().to_csv(out / f"tuning_{name}_trials.csv", index=False)
            plot_search(search.study, out / f"tuning_{name}.png", f"{name} on {data_name}: search on the "
                        f"validation split", self.settings.metric, search.final_round)

    def summary(self) -> str:
        lines = [f"model | best validation {self.settings.metric} | trials (complete / pruned / failed) | "
                 "seconds | best settings", "--- | --- | --- | --- | ---"]
        for name, search in self.searches.items():
            r = search.record(self.settings.metric)
            lines.append(f"{name} | {r['best_value']:.4f} | {r['trials']} ({r.get('complete', 0)} / "
                         f"{r.get('pruned', 0)} / {r.get('fail', 0)}) | {r['seconds']:,.0f} | "
                         + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in r["best_settings"].items()))
        return "\n".join(lines)


@dataclass(frozen=True)
class Budget:
    """The data a trial trains on (and the held-out sessions it is scored on), with its sessions' last-click times."""

    split: EncodedSplit
    times: np.ndarray | None


def objective_of(trials: Trials, budget: Budget, retriever_params: Any, clock: StageClock) -> Objective:
    if trials.name in RETRIEVERS:
        return retriever_objective(trials, budget.split)
    if trials.name == "dien":
        return reranker_objective(trials, retriever_params, budget.split, clock)
    return baseline_objective(trials, budget.split, budget.times)


def tune(params: dict[str, Any], baselines: dict[str, BaselineParams], fixed: dict[str, set[str]],
         train_log: ClickLog, settings: TuningSettings, clock: StageClock,
         dien_retriever_params: Any = None) -> TuningResult:
    """Search each model of `params` and each baseline of `baselines` (those `settings.models` names) on a
    validation split of `train_log`; `fixed`: per model, the settings the flags fixed. `dien_retriever_params`:
    the settings of DIEN's retriever where this run does not train it (`--retriever-artifact`: that artifact's
    retriever saw the held-out sessions; one is trained on the rest with these settings instead)."""
    rest, held_out, validation = validation_split(train_log, settings.validation_fraction)
    full = Budget(EncodedSplit.of(rest, held_out), session_end_times(rest))
    trial_budget = full
    if settings.trial_sessions < 1.0:
        _, latest, _ = validation_split(rest, settings.trial_sessions, "--tune-sessions")
        trial_budget = Budget(EncodedSplit.of(latest, held_out), session_end_times(latest))
        validation |= {"trial_sessions": settings.trial_sessions, "trial_train_sessions": latest.n_sessions}
    split = full.split
    validation |= {"items": len(split.item_map), "validation_predictions": int(split.test.n_clicks
                   - split.test.n_sessions), "validation_dropped_clicks": split.test.n_dropped_clicks}
    print(f"\ntuning on a validation split of the training log ({validation['by']}): "
          f"{validation['train_sessions']:,} sessions to train, {validation['validation_sessions']:,} to validate "
          f"({validation['validation_predictions']:,} predictions); {settings.metric}, {settings.n_trials} trials "
          f"per model" + (f", at most {settings.timeout:,.0f} s each" if settings.timeout else "")
          + (f"; a trial trains {settings.trial_epochs} epoch(s)" if settings.trial_epochs else "")
          + (f" on the latest {validation['trial_train_sessions']:,} sessions" if trial_budget is not full else ""))
    params, baselines = dict(params), dict(baselines)
    wanted = settings.models or TUNABLE
    searches: dict[str, ModelSearch] = {}
    for name in (m for m in TUNABLE if m in wanted and (m in params or m in baselines)):
        base = params.get(name) or baselines[name]
        trials = Trials(name, base, fixed.get(name, set()), settings, full.times is not None)
        start = trials.starting_point()
        print(f"\nsearching {name}: " + "; ".join(describe(trials.space, trials.fixed))
              + ("\n  trial 0: the run's own settings" if start is not None
                 else "\n  the run's own settings lie outside this space: every trial is the sampler's"))
        started = time.perf_counter()
        retriever_params = params.get(getattr(base, "retriever", None), dien_retriever_params)
        with clock.stage(f"tuning {name}"):
            study = run_study(name, objective_of(trials, trial_budget, retriever_params, clock), settings, start)
        search = ModelSearch(name, study, describe(trials.space, trials.fixed), 0.0)
        finalists = finalists_of(study, settings.finalists, own_first=start is not None)
        if len(finalists) > 1 and settings.budget_below_full(base):  # one alone: nothing to choose between
            print(f"\n{name}: trials {', '.join(str(t.number) for t in finalists)} again at the full budget")
            in_full = Trials(name, base, trials.fixed, settings.in_full(), trials.context["timestamps"],
                             every_epoch=False)
            with clock.stage(f"tuning {name}: the finalists at the full budget"):
                search.final_round = run_final_round(name, objective_of(in_full, full, retriever_params, clock),
                                                     finalists, settings)
        search.seconds = time.perf_counter() - started
        searches[name] = search
        (params if name in params else baselines)[name] = trials.best(search)
    result = TuningResult(settings, validation, searches, params, baselines)
    print("\n" + result.summary())
    return result
