"""`training.retrain --choose-pipeline`: every candidate (each retriever, V-SKNN, each retriever blended at every
weight) judged on the validation split, the best MRR@20 recorded in the manifest for NEXTCLICK_SERVING_MODEL=artifact,
and the blend's test row beside the models' and V-SKNN's."""

from __future__ import annotations

import json

import pytest

from stream_app.inference.served_pipeline import ServingPipeline
from tests.training.test_retrain import SMALL_RETRAIN
from training.pipeline_choice import WEIGHTS
from training.retrain import main as retrain

pytestmark = pytest.mark.training  # the test here runs training.retrain


def test_the_pipeline_chosen_on_validation_is_recorded_with_its_figures(tmp_path):
    out = retrain([*SMALL_RETRAIN, "--models", "gru4rec", "narm", "--no-baselines", "--choose-pipeline",
                   "--out", str(tmp_path / "artifact")])
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    choice = metrics["pipeline_choice"]
    assert manifest["serving_pipeline"] == choice["chosen"]
    chosen = ServingPipeline.from_dict(manifest["serving_pipeline"])  # what a worker reads back

    candidates = choice["candidates"]
    blends = [f"blend {retriever} w={weight:g}" for retriever in ("gru4rec", "narm") for weight in WEIGHTS]
    assert set(candidates) == {"gru4rec", "narm", "vsknn", *blends}
    best = max(row["mrr@20"] for row in candidates.values())
    label = chosen.pipeline if chosen.pipeline != "blend" else f"blend {chosen.retriever} w={chosen.weight:g}"
    assert candidates[label]["mrr@20"] == best
    best_blend = ServingPipeline.from_dict(choice["best_blend"])
    assert candidates[f"blend {best_blend.retriever} w={best_blend.weight:g}"]["mrr@20"] == max(
        candidates[name]["mrr@20"] for name in blends)
    split = choice["validation"]
    assert split["by"] == "time" and split["train_sessions"] + split["validation_sessions"] == 1500
    assert {row["n_predictions"] for row in candidates.values()} == {split["predictions"]}

    results = metrics["results"]  # on test: the blend's row and V-SKNN's (left out by --no-baselines, so added)
    assert set(results) == {"gru4rec", "narm", "popularity", "vsknn", "blend"}
    assert len({row["n_predictions"] for row in results.values()}) == 1
    stages = [stage["name"] for stage in metrics["stages"]]
    assert stages.index("validation split: gru4rec trained on the rest") < stages.index(
        "gru4rec training")
    if chosen.reads_neighbours:  # measured through the worker's path like every pipeline the artifact serves
        assert chosen.pipeline in metrics["served"]["pipelines"]


def test_choosing_needs_a_retriever_this_run_trains(artifact):
    with pytest.raises(SystemExit, match="--choose-pipeline"):
        retrain([*SMALL_RETRAIN, "--models", "dien", "--retriever-artifact", str(artifact), "--choose-pipeline"])
