"""`training.retrain --dien-retriever auto`: DIEN's retriever chosen by Recall@N on the validation split, DIEN
trained on it, the choice recorded and served."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_app.inference.served_pipeline import served_scorer
from stream_app.inference.sessions import SessionRecommender
from stream_app.settings import get_settings
from tests.real_slices import yoochoose_slice
from tests.stream_app.inference.test_sessions import serve, sourced
from tests.training.test_retrain import SMALL_RETRAIN
from training.retrain import main as retrain
from training.retriever_choice import best_retriever

AUTO = [*SMALL_RETRAIN, "--models", "gru4rec", "narm", "dien", "--dien-retriever", "auto", "--no-baselines"]


def test_the_retriever_with_more_targets_in_its_top_n_is_chosen():
    gru4rec = np.array([1, 3, 8, 9, 40, 90])  # in the top 5, 10, 50: 2, 4, 5 of 6
    narm = np.array([1, 2, 4, 5, 55, 60])  # 4, 4, 4
    assert best_retriever({"gru4rec": gru4rec, "narm": narm}, 5) == ("narm", {"gru4rec": 2 / 6, "narm": 4 / 6})
    assert best_retriever({"gru4rec": gru4rec, "narm": narm}, 10)[0] == "gru4rec"  # a tie: the default
    assert best_retriever({"narm": narm, "gru4rec": gru4rec}, 10)[0] == "gru4rec"  # whatever the order given
    assert best_retriever({"gru4rec": gru4rec, "narm": narm}, 50)[0] == "gru4rec"  # 5 of 6 against 4


@pytest.mark.training
def test_auto_needs_both_retrievers():
    with pytest.raises(SystemExit, match="--dien-retriever auto .* add both to --models"):
        retrain([*SMALL_RETRAIN, "--models", "gru4rec", "dien", "--dien-retriever", "auto"])
    with pytest.raises(SystemExit, match="cannot search DIEN's settings"):
        retrain([*AUTO, "--tune", "1"])


@pytest.fixture(scope="module")
def auto_retrain(tmp_path_factory):
    """A GRU4Rec that learns nothing (learning rate 0), so that NARM wins and narm+dien, which no other test
    trains, is what DIEN learns and the artifact serves."""
    return retrain([*AUTO, "--gru4rec-learning-rate", "0", "--out", str(tmp_path_factory.mktemp("auto") / "artifact")])


@pytest.mark.training
def test_dien_re_ranks_the_retriever_chosen_on_validation(auto_retrain):
    out = auto_retrain
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    choice = metrics["dien_retriever_choice"]
    recalls = choice["recalls"]
    assert choice["metric"] == "recall@10" and set(recalls) == {"gru4rec", "narm"}  # N: --dien-n-candidates
    assert recalls["narm"] > recalls["gru4rec"] and choice["chosen"] == "narm"
    chosen = choice["chosen"]
    assert manifest["models"]["dien"]["retriever"] == metrics["two_stage"]["retriever"] == chosen
    assert json.loads((out / "config.json").read_text())["dien"]["retriever"] == chosen
    assert f"{chosen}->dien" in metrics["results"]
    split = choice["validation"]
    assert split["by"] == "time" and split["train_sessions"] + split["validation_sessions"] == 1500
    stages = [stage["name"] for stage in metrics["stages"]]
    assert stages.index("validation split: narm trained on the rest") < stages.index("gru4rec training")
    # the two-stage pipeline of whichever retriever won is what NEXTCLICK_SERVING_MODEL=artifact serves
    assert manifest["serving_pipeline"]["pipeline"] == f"{chosen}+dien"
    assert f"{chosen}+dien" in metrics["served"]["pipelines"]


@pytest.mark.training
def test_the_chosen_pipeline_serves(auto_retrain):
    chosen = json.loads((auto_retrain / "metrics.json").read_text())["dien_retriever_choice"]["chosen"]
    scorer = served_scorer(auto_retrain, get_settings().model_copy(update={"serving_model": "artifact"}))
    assert scorer.name == f"{chosen}+dien"
    engine = SessionRecommender(scorer, top_k=20, max_history=50, session_ttl=1e9, exclude_seen=False)
    _, test, item_map, _ = yoochoose_slice()
    table, suggestions = {}, []
    for s in range(5):  # real test sessions, click by click
        for item in test.items[test.offsets[s]:test.offsets[s + 1]]:
            suggestions += serve(engine, [sourced(f"s{s}", str(item_map.ids[item]))], table, 0.0)
    served = [s for s in suggestions if s.source == "model"]
    assert served and all(s.model == f"{chosen}+dien" and s.items for s in served)


@pytest.mark.training
def test_choosing_the_pipeline_too_trains_the_validation_retrievers_once(tmp_path):
    out = retrain([*AUTO, "--choose-pipeline", "--out", str(tmp_path / "artifact")])
    metrics = json.loads((out / "metrics.json").read_text())
    stages = [stage["name"] for stage in metrics["stages"]]
    assert stages.count("validation split: gru4rec trained on the rest") == 1
    assert stages.count("validation split: narm trained on the rest") == 1
    pipelines, retrievers = metrics["pipeline_choice"]["candidates"], metrics["dien_retriever_choice"]
    assert retrievers["validation"]["predictions"] == pipelines["narm"]["n_predictions"]
    assert retrievers["recalls"]["narm"] == pipelines["narm"]["recall@10"]
    # the serving pipeline is the one --choose-pipeline chose
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["serving_pipeline"] == metrics["pipeline_choice"]["chosen"]
    assert manifest["models"]["dien"]["retriever"] == retrievers["chosen"]
