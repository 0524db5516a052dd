"""`python -m training.retrain --tune N`: the search on a validation split of the training log, end to end on a
real slice; and the baselines' rows in every retrain's table."""

import dataclasses
import json
from pathlib import Path

import optuna
import pytest

from stream_app.inference.artifact_format import verify_artifact
from tests.real_slices import yoochoose_slice
from training.data import datasets
from training.data.click_log import ClickLog
from training.data.datasets import DATASETS, load_dataset
from training.evaluation.baselines import ItemKNNParams, STANParams, VSKNNParams
from training.evaluation.evaluate import model_ranks
from training.progress import StageClock
from training.retrain import main as retrain
from training.retrain import training_params
from training.trainers.gru4rec import GRU4RecTraining, train_gru4rec
from training.tuning.search import Trials, TuningSettings, tune, validation_split
from training.tuning.search_spaces import SEARCH_SPACES, starting_point

pytestmark = pytest.mark.training  # every test here runs training.retrain

TUNED = ("gru4rec", "narm", "dien", "item_knn", "vsknn", "stan")
SMALL = ["--dataset", "yoochoose_rsc15_100k", "--max-train-sessions", "1500", "--max-test-sessions", "200",
         "--epochs", "1", "--gru4rec-layers", "16", "--gru4rec-batch-size", "16", "--gru4rec-n-sample", "32",
         "--narm-hidden-size", "16", "--narm-embedding-dim", "16", "--dien-item-dim", "8", "--dien-mlp", "16,8",
         "--dien-n-candidates", "10", "--top-k", "10", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tuned retrain (3 trials each, tiny models) that records when a search ends and when the test log is read."""
    events = []
    spec = DATASETS["yoochoose_rsc15_100k"]

    def read_test(path):
        events.append("test log read")
        return spec.read_test(path)

    optimize = optuna.Study.optimize

    def recorded_optimize(study, *args, **kwargs):
        optimize(study, *args, **kwargs)
        events.append(f"search of {study.study_name} ended")

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DATASETS, "yoochoose_rsc15_100k", datasets.DatasetSpec(
            spec.name, spec.train, spec.test, spec.read_train, read_test, spec.validation))
        patch.setattr(optuna.Study, "optimize", recorded_optimize)
        out = retrain([*SMALL, "--tune", "3", "--tune-seed", "7", "--tune-sessions", "0.8",
                       "--out", str(tmp_path_factory.mktemp("tuned") / "a")])
    return out, events


def test_the_test_log_is_read_once_and_only_after_every_search_ended(tuned):
    out, events = tuned
    # a trial trains on 80 % of the split's sessions: a search whose best trial is not trial 0 has its finalists
    # trained again in full
    record = json.loads((out / "tuning.json").read_text())["models"]
    searches = [f"search of {name}{stage} ended" for name in TUNED
                for stage in ("", " in full")[:1 + ("finalists" in record[name])]]
    assert any("finalists" in r for r in record.values())
    for r in record.values():
        if "finalists" in r:  # the short budget's best and trial 0, the run's own settings
            assert len(r["finalists"]) == 2 and 0 in {f["trial"] for f in r["finalists"]}
        else:  # trial 0 led the short budget: nothing to choose between
            assert r["best_trial"] == 0
    assert events == searches + ["test log read"]


def test_the_final_models_train_with_the_best_trials_settings(tuned):
    out, _ = tuned
    record = json.loads((out / "tuning.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert set(record["models"]) == set(TUNED)
    for name, search in record["models"].items():
        trained = config["baselines"][name] if name in ("item_knn", "vsknn", "stan") else config[name]
        assert search["trials"] == 3 and search["metric"] == "mrr@20"
        assert search["best_settings"] and all(trained[k] == v for k, v in search["best_settings"].items())
        for key, value in search["best_params"].items():  # optuna's own record of the best trial
            assert trained[key] == pytest.approx([value] if key == "layers" else value)
    # the flags fixed what they set: GRU4Rec's width and batch stayed, NARM's widths too
    assert config["gru4rec"]["layers"] == [16] and config["gru4rec"]["batch_size"] == 16
    assert "layers" not in record["models"]["gru4rec"]["best_params"]
    assert config["narm"]["hidden_size"] == 16 and "hidden_size" not in record["models"]["narm"]["best_params"]
    assert record["validation"]["by"] == "time" and record["validation"]["validation_sessions"] == 150
    assert record["settings"]["seed"] == 7 and record["settings"]["trial_sessions"] == 0.8
    assert record["validation"]["trial_train_sessions"] == pytest.approx(0.8 * (1500 - 150), abs=1)


def test_trials_and_plots_are_in_the_artifact_and_sealed_by_its_manifest(tuned):
    out, _ = tuned
    manifest = verify_artifact(out, models=("gru4rec", "narm", "dien"))  # every file against its sha256
    expected = {"tuning.json"} | {f"tuning_{m}_trials.csv" for m in TUNED} | {f"tuning_{m}.png" for m in TUNED}
    assert expected <= set(manifest["files"])
    for name in TUNED:
        lines = (out / f"tuning_{name}_trials.csv").read_text().strip().splitlines()
        assert len(lines) == 1 + 3  # header, three trials
    stages = [s["name"] for s in json.loads((out / "metrics.json").read_text())["stages"]]
    assert stages.index("tuning stan") < stages.index("loading the test log") < stages.index("gru4rec training")


def test_baselines_are_rows_of_the_table_and_of_metrics_json(tuned, tmp_path):
    out, _ = tuned
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert {"popularity", "item_knn", "vsknn", "stan"} <= set(results)
    assert len({row["n_predictions"] for row in results.values()}) == 1  # the same predictions as the models

    quick = retrain([*SMALL, "--models", "gru4rec", "--no-baselines", "--out", str(tmp_path / "quick")])
    assert set(json.loads((quick / "metrics.json").read_text())["results"]) == {"gru4rec", "popularity"}
    assert json.loads((quick / "config.json").read_text())["baselines"] == {}


def test_validation_split_holds_out_the_latest_sessions():
    train, _ = load_dataset("yoochoose_rsc15_100k")
    train = train.head_sessions(2000)
    rest, held, how = validation_split(train, 0.2)
    assert rest.n_sessions + held.n_sessions == 2000 and held.n_sessions == pytest.approx(400, abs=5)
    last_click = lambda log: log.times[log.session_offsets()[1:] - 1]
    assert last_click(rest).max() < last_click(held).min()  # by time: every held-out session ends later
    assert how["by"] == "time"

    timeless = ClickLog(train.session_ids, train.item_ids, None, "no times")
    rest, held, how = validation_split(timeless, 0.2)
    assert how["by"] == "order" and list(held.session_ids) == list(train.session_ids[-held.n_clicks:])
    assert held.n_sessions == 400


def test_a_seeded_search_proposes_and_scores_the_same_trials(tmp_path):
    train, _ = load_dataset("yoochoose_rsc15_100k")
    train = train.head_sessions(2000)
    settings = TuningSettings(n_trials=4, seed=3, progress=False)
    baselines = {"item_knn": ItemKNNParams(), "vsknn": VSKNNParams()}
    runs = [tune({}, baselines, {}, train, settings, StageClock()) for _ in range(2)]
    for name in baselines:
        trials = [[(t.params, t.value) for t in run.searches[name].study.trials] for run in runs]
        assert trials[0] == trials[1] and len(trials[0]) == 4
        assert runs[0].baselines[name] == runs[1].baselines[name]
        best = runs[0].searches[name].study.best_trial
        settings_of_best = {**vars(baselines[name]), **best.user_attrs["settings"]}
        assert runs[0].baselines[name] == type(baselines[name])(**settings_of_best)


def test_a_trial_below_the_pruners_bar_stops_after_the_epoch_it_reported():
    train, test, _, popularity = yoochoose_slice(1000, 100)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = study.ask()  # MRR can never reach 2: pruned at its first report
    base = GRU4RecTraining(layers=(16,), batch_size=16, n_sample=32, n_epochs=3)
    trials = Trials("gru4rec", base, {"layers", "batch_size"}, TuningSettings(n_trials=1, progress=False), True)
    params = trials.params(trial)
    scores = []
    with pytest.raises(optuna.TrialPruned):
        train_gru4rec(train, popularity, params, progress=False,
                      on_epoch=trials.epoch_reporter(trial, scores, lambda model: model_ranks(model, test), 3))
    assert list(trial.storage.get_trial(trial._trial_id).intermediate_values) == [1]  # epoch 1 only
    assert len(scores) == 1 and 0.0 <= scores[0] <= 1.0


def test_the_first_trial_trains_the_runs_own_settings_and_the_finalists_train_again_in_full():
    train, _ = load_dataset("yoochoose_rsc15_100k")
    train = train.head_sessions(1200)
    base = GRU4RecTraining(layers=(64,), batch_size=48, n_sample=32, n_epochs=2, learning_rate=0.05,
                           dropout_embed=0.5, dropout_hidden=0.3, momentum=0.15, sample_alpha=0.3, bpreg=0.9)
    settings = TuningSettings(n_trials=3, seed=1, progress=False, trial_epochs=1, trial_sessions=0.5, finalists=2)
    result = tune({"gru4rec": base}, {}, {}, train, settings, StageClock())
    search = result.searches["gru4rec"]
    first, *others = search.study.trials
    assert dataclasses.replace(base, **first.user_attrs["settings"]) == base  # trial 0: the run's own settings
    assert all(t.user_attrs["settings"] != first.user_attrs["settings"] for t in others)  # then the sampler's
    for trial in search.study.trials:
        assert list(trial.intermediate_values) == [1]  # one epoch per trial, ...
    whole = validation_split(train, settings.validation_fraction)[2]["train_sessions"]
    assert result.validation["trial_train_sessions"] == pytest.approx(whole / 2, abs=1)  # ... on the latest half

    # the two best trials and trial 0 again, at the model's own epochs on every session; the best there wins
    ranked = [t.number for t in sorted(search.study.trials, key=lambda t: t.value, reverse=True)]
    finals = search.final_round.trials
    assert [t.user_attrs["search_trial"] for t in finals] == ranked[:2] + ([0] if 0 not in ranked[:2] else [])
    for final in finals:
        searched = search.study.trials[final.user_attrs["search_trial"]]
        assert final.user_attrs["settings"] == searched.user_attrs["settings"]
        assert list(final.intermediate_values) == [2]  # scored once, after its last epoch
    chosen = max(finals, key=lambda t: t.value)
    assert result.params["gru4rec"] == dataclasses.replace(base, **chosen.user_attrs["settings"])
    assert result.params["gru4rec"].n_epochs == 2  # the final training trains its own epochs
    record = search.record(settings.metric)
    assert record["best_trial"] == chosen.user_attrs["search_trial"] and record["best_value"] == chosen.value
    assert [f["trial"] for f in record["finalists"]] == [t.user_attrs["search_trial"] for t in finals]


def test_a_search_starts_from_the_settings_only_where_its_space_holds_them():
    space = SEARCH_SPACES["gru4rec"]
    official = training_params("gru4rec", Path("configs/diginetica.toml"))
    start = starting_point(space, set(), dataclasses.asdict(official))
    assert start == {"loss": "bpr-max", "layers": 512, "batch_size": 128, "learning_rate": 0.05,
                     "dropout_embed": 0.5, "dropout_hidden": 0.3, "momentum": 0.15, "sample_alpha": 0.3,
                     "bpreg": 0.9, "elu_param": 1.0}
    assert "layers" not in starting_point(space, {"layers"}, dataclasses.asdict(official))  # a flag fixed it
    off_grid = dataclasses.asdict(dataclasses.replace(official, learning_rate=0.0512))
    assert starting_point(space, set(), off_grid) is None
    assert starting_point(space, set(), dataclasses.asdict(dataclasses.replace(official, layers=(64, 64)))) is None
    stan = dataclasses.asdict(STANParams()) | {"timestamps": False}  # no decay: outside the decay's range
    assert starting_point(SEARCH_SPACES["stan"], set(), stan) is None
    assert starting_point(SEARCH_SPACES["stan"], set(), dataclasses.asdict(STANParams()) | {"timestamps": True})
    for config in ("configs/diginetica.toml", "configs/narm_yoochoose1_64.toml"):  # their [stan]: a search starts there
        tuned = dataclasses.asdict(training_params("stan", Path(config))) | {"timestamps": False}
        assert starting_point(SEARCH_SPACES["stan"], set(), tuned) is not None
