"""`training.retrain --choose-pipeline`: the pipeline that serves the artifact (a retriever, V-SKNN, or a retriever
blended with V-SKNN), chosen by MRR@20 on a validation split of the training log; the choice goes into the manifest
(`serving_pipeline`, which NEXTCLICK_SERVING_MODEL=artifact serves) and its figures into metrics.json
(`pipeline_choice`).

The split is `--tune`'s (`training.tuning.search.validation_split`: the latest `--tune-validation-fraction` of the
training sessions, by time where the log has times). Nothing scored on it trained on it: each retriever of the run
is trained once more, with the run's settings, on the rest (`training.validation_retrievals`, shared with
`--dien-retriever auto`), and V-SKNN indexes the rest. The candidates, scored on the held-out sessions
(`training.evaluation.blended`): each retriever, V-SKNN, and each retriever blended with V-SKNN at every weight of
WEIGHTS. The highest MRR@20 wins; a tie goes to the earlier candidate in that order. A two-stage pipeline (DIEN) is
no candidate: judging it would train DIEN once more. The final models then train on the whole training log as
without the flag, and the test table gets the row of the best blend on validation (its retriever and weight) beside
the models' and V-SKNN's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream_app.inference.blended_scorer import PIPELINE as BLEND
from stream_app.inference.live_knn import PIPELINE as VSKNN
from stream_app.inference.served_pipeline import ServingPipeline
from stream_app.inference.session_knn import VSKNNParams
from training.data.click_log import EncodedSplit, Sessions
from training.data.prefixes import Prefixes
from training.evaluation.blended import blended_ranks, knn_retrieval
from training.evaluation.evaluate import RankingMetrics, Retrieval, format_table
from training.model_training import RetrainPlan, TrainedModels
from training.progress import StageClock
from training.validation_retrievals import ValidationRetrievals

WEIGHTS = tuple(round(0.1 * step, 1) for step in range(1, 10))  # the neural weight w; 0 and 1: V-SKNN, the retriever
CUTOFF = 20  # chosen by MRR@20


def targets_of(sessions: Sessions) -> np.ndarray:
    """The target of every prediction, click order."""
    return Prefixes.of(sessions, 1).targets


def label(pipeline: ServingPipeline) -> str:
    return f"{BLEND} {pipeline.retriever} w={pipeline.weight:g}" if pipeline.pipeline == BLEND else pipeline.pipeline


def candidate_ranks(retrievals: dict[str, Retrieval], knn: Retrieval, knn_params: VSKNNParams, sessions: Sessions,
                    n_items: int) -> list[tuple[ServingPipeline, np.ndarray]]:
    """Every candidate pipeline and its ranks on `sessions`' predictions, in the order ties are settled."""
    targets = targets_of(sessions)
    candidates = [(ServingPipeline(name), retrieval.ranks) for name, retrieval in retrievals.items()]
    candidates.append((ServingPipeline(VSKNN, vsknn=knn_params), knn.ranks))
    for name, retrieval in retrievals.items():
        for weight in WEIGHTS:
            candidates.append((ServingPipeline(BLEND, name, weight, knn_params),
                               blended_ranks(retrieval, knn, weight, targets, n_items)))
    return candidates


@dataclass(frozen=True)
class PipelineChoice:
    chosen: ServingPipeline
    best_blend: ServingPipeline  # the blend of highest validation MRR@20: the test table's blend row
    validation: dict  # how the split was made (`validation_split`)
    figures: dict[str, dict]  # each candidate's validation figures, by `label`

    def record(self) -> dict:
        """metrics.json's `pipeline_choice`."""
        return {"metric": f"mrr@{CUTOFF}", "weights": list(WEIGHTS), "validation": self.validation,
                "chosen": self.chosen.to_dict(), "best_blend": self.best_blend.to_dict(), "candidates": self.figures}

    def test_rows(self, trained: TrainedModels, split: EncodedSplit, rows: list[RankingMetrics],
                  clock: StageClock) -> list[RankingMetrics]:
        """The best blend's test row, and V-SKNN's when the baselines left it out."""
        blend = self.best_blend
        neural = trained.retrievals[blend.retriever]
        with clock.stage("vsknn's served lists and the blend on the test predictions"):
            knn = knn_retrieval(split, blend.vsknn, neural.top.shape[1])
            ranks = blended_ranks(neural, knn, blend.weight, targets_of(split.test), len(split.item_map))
        dropped = split.test.n_dropped_clicks
        extra = [RankingMetrics.from_ranks(BLEND, ranks, dropped)]
        if not any(row.name == VSKNN for row in rows):
            extra.append(RankingMetrics.from_ranks(VSKNN, knn.ranks, dropped))
        return extra

    def summary(self) -> str:
        return (f"served pipeline, chosen by validation MRR@{CUTOFF}: {self.chosen.describe()}; "
                f"the blend row: {self.best_blend.describe()}")


def choose_pipeline(plan: RetrainPlan, validation: ValidationRetrievals, knn_params: VSKNNParams,
                    clock: StageClock) -> PipelineChoice:
    """Score every candidate on the held-out sessions of `validation` (the plan's retrievers trained on the rest)
    and choose (module docstring)."""
    split, how, retrievals = validation.split, validation.how, validation.retrievals
    print("\nchoosing the serving pipeline on the validation split")
    with clock.stage("choosing the pipeline: vsknn and the blends on validation"):
        knn = knn_retrieval(split, knn_params, plan.top_k)
        candidates = candidate_ranks(retrievals, knn, knn_params, split.test, len(split.item_map))
    dropped = split.test.n_dropped_clicks
    rows = {label(pipeline): RankingMetrics.from_ranks(label(pipeline), ranks, dropped)
            for pipeline, ranks in candidates}
    print("\nvalidation:\n" + format_table(list(rows.values())))

    def mrr(pipeline: ServingPipeline) -> float:
        return rows[label(pipeline)].mrr[CUTOFF]

    pipelines = [pipeline for pipeline, _ in candidates]
    choice = PipelineChoice(max(pipelines, key=mrr), max((p for p in pipelines if p.pipeline == BLEND), key=mrr),
                            how | {"predictions": int(len(targets_of(split.test))), "dropped_clicks": dropped},
                            {name: row.to_dict() for name, row in rows.items()})
    print(choice.summary())
    return choice
