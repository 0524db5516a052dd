"""Which pipeline serves an artifact under NEXTCLICK_SERVING_MODEL, built one way for the worker, the quality gate
and training's served figures.

A model pipeline (`stream_app.inference.scoring.PIPELINES`) is the artifact's graphs; `vsknn` is V-SKNN over a live
session index (`stream_app.inference.live_knn`) as the artifact's version; `artifact` serves the pipeline the
artifact's manifest records (`serving_pipeline`, chosen by validation MRR@20 in `training.retrain --choose-pipeline`):
a retriever, V-SKNN, or the blend of the two (`stream_app.inference.blended_scorer`), with the weight and the kNN
parameters it was chosen with. An artifact that records none serves GRU4Rec, the default pipeline.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from stream_app.inference.artifact_format import MANIFEST, ArtifactError
from stream_app.inference.blended_scorer import PIPELINE as BLEND
from stream_app.inference.blended_scorer import BlendedScorer
from stream_app.inference.live_knn import PIPELINE as VSKNN
from stream_app.inference.live_knn import LiveNeighbours
from stream_app.inference.scoring import MODEL_NAME, PIPELINES, Scorer, measured_policy
from stream_app.inference.session_knn import VSKNNParams
from stream_app.settings import Settings

ARTIFACT = "artifact"  # the setting that serves the artifact's recorded pipeline
KNN_PIPELINES = (VSKNN, BLEND)  # the pipelines that read a live session index
LIVE_INDEX_SETTINGS = (VSKNN, ARTIFACT)  # the settings under which a worker keeps one


@dataclass(frozen=True)
class ServingPipeline:
    """A pipeline and what it was chosen with: the manifest's `serving_pipeline` (`to_dict`)."""

    pipeline: str  # a retriever of `PIPELINES`, `vsknn` or `blend`
    retriever: str | None = None  # blend: the neural retriever fused with V-SKNN
    weight: float | None = None  # blend: the neural weight w (`stream_app.inference.blend`)
    vsknn: VSKNNParams | None = None  # vsknn, blend: V-SKNN's parameters (None: the worker's settings)

    def __post_init__(self) -> None:
        if self.pipeline not in (*PIPELINES, *KNN_PIPELINES):
            raise ArtifactError(f"unknown serving pipeline {self.pipeline!r}")
        if self.pipeline == BLEND and (self.retriever not in PIPELINES or self.weight is None):
            raise ArtifactError(f"a blend needs a retriever and a weight, got {self.retriever!r}, {self.weight!r}")

    @property
    def reads_neighbours(self) -> bool:
        return self.pipeline in KNN_PIPELINES

    @property
    def model_pipeline(self) -> str:
        """The artifact pipeline it loads: itself, a blend's retriever, or (V-SKNN) GRU4Rec for its version and
        popular items."""
        return self.pipeline if self.pipeline in PIPELINES else self.retriever or MODEL_NAME

    def to_dict(self) -> dict:
        return {"pipeline": self.pipeline, "retriever": self.retriever, "weight": self.weight,
                "vsknn": None if self.vsknn is None else dataclasses.asdict(self.vsknn)}

    @classmethod
    def from_dict(cls, record: dict) -> ServingPipeline:
        try:
            vsknn = None if record.get("vsknn") is None else VSKNNParams(**record["vsknn"])
            return cls(record["pipeline"], record.get("retriever"), record.get("weight"), vsknn)
        except (KeyError, TypeError) as error:
            raise ArtifactError(f"unreadable serving_pipeline {record!r}: {error!r}") from None

    def describe(self) -> str:
        if self.pipeline == BLEND:
            return f"blend of {self.retriever} and vsknn, neural weight {self.weight:g}"
        return self.pipeline


def knn_params(settings: Settings) -> VSKNNParams:
    """V-SKNN's parameters from NEXTCLICK_KNN_NEIGHBOURS and NEXTCLICK_KNN_SAMPLE_SIZE."""
    return VSKNNParams(k=settings.knn_neighbours, sample_size=settings.knn_sample_size)


def live_neighbours(settings: Settings, params: VSKNNParams | None = None) -> LiveNeighbours:
    """The worker's live index: the last NEXTCLICK_KNN_SESSIONS sessions, V-SKNN with `params` (None: the
    settings')."""
    return LiveNeighbours(settings.knn_sessions, params or knn_params(settings))


def served_pipeline(directory: Path, settings: Settings) -> ServingPipeline:
    """The pipeline `settings.serving_model` serves from the artifact in `directory`."""
    if settings.serving_model != ARTIFACT:
        return ServingPipeline(settings.serving_model)
    recorded = json.loads((directory / MANIFEST).read_text()).get("serving_pipeline")
    return ServingPipeline(MODEL_NAME) if recorded is None else ServingPipeline.from_dict(recorded)


def served_scorer(directory: Path, settings: Settings, neighbours: LiveNeighbours | None = None,
                  chosen: ServingPipeline | None = None) -> Scorer:
    """The scorer a worker with `settings` serves the artifact in `directory` with: `chosen`, or (None) the
    pipeline `settings.serving_model` serves from it. A pipeline that reads a live index reads `neighbours` (the
    worker's), or a new empty one (a replay of held-out sessions fills it as it serves them:
    `stream_app.inference.served_quality`). The artifact loads outside the index's lock; only its items'
    numbering takes it."""
    chosen = chosen or served_pipeline(directory, settings)
    model = Scorer(directory, settings.inference_threads, chosen.model_pipeline, settings.topk_index,
                   settings.topk_index_min_items, settings.inference_provider)
    if not chosen.reads_neighbours:
        return model
    if neighbours is None:
        neighbours = live_neighbours(settings, chosen.vsknn)
    with neighbours.lock:
        knn = neighbours.scorer(model, settings.max_history, chosen.vsknn)
        scorer = knn if chosen.pipeline == VSKNN else BlendedScorer(model, knn, chosen.weight)
    scorer.measured = measured_policy(directory, scorer.name)
    return scorer
