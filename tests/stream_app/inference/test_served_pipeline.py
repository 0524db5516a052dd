"""What serves an artifact under NEXTCLICK_SERVING_MODEL: `artifact` serves the pipeline the manifest records (a
blend with its weight and kNN parameters, V-SKNN, STAN, GRU4Rec where it records none), other values ignore the
record, `stan` serves STAN over the worker's index with its settings, a replay of held-out sessions fills a kNN
pipeline's index as it serves them, and the setting refuses the catalogue rules and values it does not know."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from devtools.artifact_versions import edit_manifest, renamed
from stream_app.inference.artifact_format import ArtifactError
from stream_app.inference.blended_scorer import BlendedScorer
from stream_app.inference.live_knn import LiveNeighbours
from stream_app.inference.scoring import Scorer
from stream_app.inference.served_baseline import ServedBaseline
from stream_app.inference.served_pipeline import (
    LIVE_INDEX_SETTINGS,
    ServingPipeline,
    live_neighbours,
    served_pipeline,
    served_scorer,
)
from stream_app.inference.served_quality import served_top_k_metrics
from stream_app.inference.session_knn import VSKNNParams
from stream_app.inference.stan import STAN, STANParams
from stream_app.settings import Settings
from training.data.datasets import load_dataset

ARTIFACT_SETTINGS = Settings(serving_model="artifact", catalogue_rules=False)
CHOSEN_KNN = VSKNNParams(k=7, sample_size=30)  # not the worker's settings: the artifact's own must serve


def recording(artifact: Path, folder: Path, **choice: object) -> Path:
    """A copy of `artifact` whose manifest records `choice` as its serving pipeline."""
    renamed(artifact, folder, folder.name)
    edit_manifest(folder, serving_pipeline=ServingPipeline(**choice).to_dict())
    return folder


def test_artifact_serves_the_pipeline_it_records(artifact: Path, tmp_path: Path) -> None:
    blend = recording(artifact, tmp_path / "blend", pipeline="blend", retriever="gru4rec", weight=0.4,
                      vsknn=CHOSEN_KNN)
    neighbours = LiveNeighbours(100, VSKNNParams())
    scorer = served_scorer(blend, ARTIFACT_SETTINGS, neighbours)
    assert isinstance(scorer, BlendedScorer) and scorer.name == "blend" and scorer.weight == 0.4
    assert scorer.neighbours is neighbours and scorer.knn.model.params == CHOSEN_KNN
    knn = served_scorer(recording(artifact, tmp_path / "knn", pipeline="vsknn", vsknn=CHOSEN_KNN), ARTIFACT_SETTINGS)
    assert isinstance(knn, ServedBaseline) and knn.model.params == CHOSEN_KNN
    plain = served_scorer(artifact, ARTIFACT_SETTINGS)  # records nothing: the default pipeline
    assert type(plain) is Scorer and plain.name == "gru4rec"
    assert type(served_scorer(blend, Settings())) is Scorer  # NEXTCLICK_SERVING_MODEL=gru4rec: the record waits


def test_stan_serves_over_the_workers_index_with_its_settings(artifact: Path, tmp_path: Path) -> None:
    settings = Settings(serving_model="stan", catalogue_rules=False, stan_neighbours=7, stan_lambda_time=3_600.0)
    assert settings.serving_model in LIVE_INDEX_SETTINGS
    assert served_pipeline(artifact, settings) == ServingPipeline("stan")
    neighbours = live_neighbours(settings)  # the index the worker keeps
    assert isinstance(neighbours.model, STAN)
    scorer = served_scorer(artifact, settings, neighbours)
    assert isinstance(scorer, ServedBaseline) and scorer.name == "stan" and scorer.neighbours is neighbours
    assert isinstance(scorer.model, STAN) and scorer.model.params == STANParams(k=7, lambda_time=3_600.0)
    recorded = served_scorer(recording(artifact, tmp_path / "stan", pipeline="stan"), ARTIFACT_SETTINGS)
    assert recorded.name == "stan" and recorded.model.params == STANParams()  # the worker's settings: the defaults
    with pytest.raises(ArtifactError):
        ServingPipeline("stan", vsknn=CHOSEN_KNN)  # STAN's parameters are the worker's, never V-SKNN's


def test_a_replay_of_held_out_sessions_fills_the_index_as_it_serves_them(artifact: Path, tmp_path: Path) -> None:
    blend = recording(artifact, tmp_path / "blend", pipeline="blend", retriever="gru4rec", weight=0.5,
                      vsknn=CHOSEN_KNN)
    sessions = load_dataset("yoochoose_rsc15_100k")[1].head_sessions(150).sessions_as_ids()
    scorer = served_scorer(blend, ARTIFACT_SETTINGS)
    assert scorer.neighbours.index.n_sessions == 0
    served = served_top_k_metrics(scorer, sessions, ARTIFACT_SETTINGS)
    assert scorer.neighbours.index.n_sessions == len(sessions)
    assert served.predictions == sum(len(session) - 1 for session in sessions) and served.recall > 0


@pytest.mark.parametrize("model", ["vsknn", "stan", "artifact"])
def test_the_knn_pipelines_serve_with_the_catalogue_rules_on_or_off(model: str) -> None:
    for rules in (True, False):
        assert Settings(serving_model=model, catalogue_rules=rules).serving_model == model


def test_a_serving_model_it_does_not_know_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(serving_model="blend")  # a blend's weight and retriever come from an artifact: `artifact`
