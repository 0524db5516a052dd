"""`training.retrain --dien-retriever auto`: DIEN's retriever chosen by Recall@N on a validation split of the
training log, before DIEN trains.

DIEN re-ranks its retriever's top N (`DIENTraining.n_candidates`): a next click outside it stays out whatever DIEN
learns, so the retriever's Recall@N bounds the pipeline, and on some data one retriever's is far above the other's.
Each retriever that can feed DIEN (GRU4Rec, NARM: both must be in the run) is trained on the rest of the split and
scored on the held-out sessions (`training.validation_retrievals`, the same split and models as `--choose-pipeline`'s
when the run asks for both); the higher Recall@N wins, a tie goes to GRU4Rec (the default retriever). DIEN, its
stacking included, then trains on the chosen one as if `--dien-retriever` had named it. The choice and both
figures go into metrics.json (`dien_retriever_choice`) and, unless `--choose-pipeline` chose what serves, the
manifest records `<chosen>+dien` as the serving pipeline (`serving_pipeline`), which NEXTCLICK_SERVING_MODEL=artifact
serves whichever retriever a version chose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_app.inference.served_pipeline import ServingPipeline
from training.evaluation.evaluate import RankingMetrics
from training.model_training import RETRIEVERS
from training.validation_retrievals import ValidationRetrievals


@dataclass(frozen=True)
class RetrieverChoice:
    chosen: str
    n: int  # Recall@N's N: DIEN's n_candidates
    recalls: dict[str, float]  # each retriever's validation Recall@N
    validation: dict  # how the split was made (`validation_split`), and its predictions

    @property
    def pipeline(self) -> ServingPipeline:
        """The two-stage pipeline the choice makes."""
        return ServingPipeline(f"{self.chosen}+dien")

    def applied(self, params: dict[str, Any]) -> dict[str, Any]:
        """A run's hyper-parameters with DIEN re-ranking the chosen retriever."""
        return params | {"dien": dataclasses.replace(params["dien"], retriever=self.chosen)}

    def record(self) -> dict:
        """metrics.json's `dien_retriever_choice`."""
        return {"metric": f"recall@{self.n}", "chosen": self.chosen, "recalls": self.recalls,
                "validation": self.validation}

    def summary(self) -> str:
        figures = ", ".join(f"{name} {recall:.4f}" for name, recall in self.recalls.items())
        return f"dien's retriever, chosen by validation Recall@{self.n}: {self.chosen} ({figures})"


def best_retriever(ranks: dict[str, np.ndarray], n: int) -> tuple[str, dict[str, float]]:
    """The retriever whose ranks of the same predictions hold the most targets within `n` (a tie: the earlier in
    `RETRIEVERS`), and each one's Recall@n."""
    recalls = {name: RankingMetrics.from_ranks(name, ranks[name], 0, (n,)).recall[n]
               for name in RETRIEVERS if name in ranks}
    return max(recalls, key=recalls.__getitem__), recalls


def choose_retriever(validation: ValidationRetrievals, n: int) -> RetrieverChoice:
    """DIEN's retriever among those `validation` trained, by Recall@`n` on its held-out sessions."""
    chosen, recalls = best_retriever({name: r.ranks for name, r in validation.retrievals.items()}, n)
    test = validation.split.test
    predictions = len(next(iter(validation.retrievals.values())).ranks)
    choice = RetrieverChoice(chosen, n, recalls, validation.how | {"predictions": predictions,
                                                                   "dropped_clicks": test.n_dropped_clicks})
    print(choice.summary())
    return choice
