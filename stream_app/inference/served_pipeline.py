"""Which pipeline serves an artifact under NEXTCLICK_SERVING_MODEL, built one way for the worker, the quality gate
and training's served figures.

A model pipeline (`stream_app.inference.scoring.PIPELINES`) is the artifact's graphs; `vsknn` and `stan` are V-SKNN
and STAN over a live session index (`stream_app.inference.live_knn`) as the artifact's version; `artifact` serves
the pipeline the artifact's manifest records (`serving_pipeline`, chosen by validation MRR@20 in `training.retrain
--choose-pipeline`): a retriever, V-SKNN, or the blend of the two (`stream_app.inference.blended_scorer`), with the
weight and the kNN parameters it was chosen with; or, after `--dien-retriever auto` alone, DIEN on the retriever
chosen for it (`training.retriever_choice`). An artifact that records none serves GRU4Rec, the default pipeline.
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
from stream_app.inference.live_knn import STAN_PIPELINE as STAN
from stream_app.inference.live_knn import KNNParams, LiveNeighbours
from stream_app.inference.scoring import MODEL_NAME, PIPELINES, Scorer, measured_policy
from stream_app.inference.session_knn import VSKNNParams
from stream_app.inference.stan import STANParams
from stream_app.settings import Settings

ARTIFACT = "artifact"  # the setting that serves the artifact's recorded pipeline
KNN_PIPELINES = (VSKNN, STAN, BLEND)  # the pipelines that read a live session index
LIVE_INDEX_SETTINGS = (VSKNN, STAN, ARTIFACT)  # the settings under which a worker keeps one


@dataclass(frozen=True)
class ServingPipeline:
    """A pipeline and what it was chosen with: the manifest's `serving_pipeline` (`to_dict`)."""

    pipeline: str  # a retriever of `PIPELINES`, `vsknn`, `stan` or `blend`
    retriever: str | None = None  # blend: the neural retriever fused with V-SKNN
    weight: float | None = None  # blend: the neural weight w (`stream_app.inference.blend`)
    vsknn: VSKNNParams | None = None  # vsknn, blend: V-SKNN's parameters (None: the worker's settings)

    def __post_init__(self) -> None:
        if self.pipeline not in (*PIPELINES, *KNN_PIPELINES):
            raise ArtifactError(f"unknown serving pipeline {self.pipeline!r}")
        if self.pipeline == BLEND and (self.retriever not in PIPELINES or self.weight is None):
            raise ArtifactError(f"a blend needs a retriever and a weight, got {self.retriever!r}, {self.weight!r}")
        if self.pipeline == STAN and self.vsknn is not None:
            raise ArtifactError("stan serves with the worker's NEXTCLICK_STAN_* settings, not V-SKNN parameters")

    @property
    def reads_neighbours(self) -> bool:
        return self.pipeline in KNN_PIPELINES

    @property
    def model_pipeline(self) -> str:
        """The artifact pipeline it loads: itself, a blend's retriever, or (V-SKNN, STAN) GRU4Rec for its version
        and popular items."""
        return self.pipeline if self.pipeline in PIPELINES else self.retriever or MODEL_NAME

    def knn_params(self, settings: Settings) -> KNNParams:
        """What its live kNN scores with: STAN's settings (stan), else the V-SKNN parameters it records or, where
        it records none, V-SKNN's settings."""
        return knn_params(settings, STAN) if self.pipeline == STAN else self.vsknn or knn_params(settings)

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


def knn_params(settings: Settings, pipeline: str = VSKNN) -> KNNParams:
    """The live kNN `pipeline`'s parameters: STAN's from NEXTCLICK_STAN_*, V-SKNN's (any other) from
    NEXTCLICK_KNN_NEIGHBOURS and NEXTCLICK_KNN_SAMPLE_SIZE."""
    if pipeline == STAN:
        return STANParams(k=settings.stan_neighbours, sample_size=settings.stan_sample_size,
                          lambda_position=settings.stan_lambda_position, lambda_time=settings.stan_lambda_time,
                          lambda_item=settings.stan_lambda_item)
    return VSKNNParams(k=settings.knn_neighbours, sample_size=settings.knn_sample_size)


def live_neighbours(settings: Settings, params: KNNParams | None = None) -> LiveNeighbours:
    """The worker's live index: the last NEXTCLICK_KNN_SESSIONS sessions, scored with `params` (None: the
    settings' for NEXTCLICK_SERVING_MODEL: STAN's for `stan`, else V-SKNN's)."""
    return LiveNeighbours(settings.knn_sessions, params or knn_params(settings, settings.serving_model))


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
    params = chosen.knn_params(settings)
    if neighbours is None:
        neighbours = live_neighbours(settings, params)
    with neighbours.lock:
        knn = neighbours.scorer(model, settings.max_history, params)
        scorer = BlendedScorer(model, knn, chosen.weight) if chosen.pipeline == BLEND else knn
    scorer.measured = measured_policy(directory, scorer.name)
    return scorer
