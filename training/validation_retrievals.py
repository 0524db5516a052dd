"""Each retriever of a run trained on the rest of a validation split of the training log, and its top-K for the
held-out sessions: what `--choose-pipeline` (`training.pipeline_choice`) and `--dien-retriever auto`
(`training.retriever_choice`) judge, computed once when a run asks for both.

The split is `--tune`'s (`training.tuning.search.validation_split`: the latest `--tune-validation-fraction` of the
training sessions, by time where the log has times). Nothing scored on it trained on it: each retriever is trained
once more, with the run's settings, on the rest (its training cost again, on the rest's sessions).
"""

from __future__ import annotations

from dataclasses import dataclass

from training.data.click_log import ClickLog, EncodedSplit
from training.evaluation.evaluate import Retrieval, retrieve
from training.model_training import RETRIEVERS, RetrainPlan, fit_retriever, retriever_scores
from training.progress import StageClock
from training.tuning.search import validation_split


@dataclass(frozen=True)
class ValidationRetrievals:
    split: EncodedSplit  # `train`: the rest, `test`: the held-out sessions
    how: dict  # how the split was made (`validation_split`)
    retrievals: dict[str, Retrieval]  # each retriever's top-K of the held-out predictions, in `RETRIEVERS` order


def validation_retrievals(plan: RetrainPlan, train_log: ClickLog, fraction: float,
                          clock: StageClock) -> ValidationRetrievals:
    """The plan's retrievers trained on the rest of a validation split of `train_log` (the latest `fraction` held
    out), each with its top-`plan.top_k` of the held-out predictions."""
    rest, held_out, how = validation_split(train_log, fraction)
    split = EncodedSplit.of(rest, held_out)
    print(f"\nthe retrievers on a validation split ({how['by']}): {how['train_sessions']:,} sessions to train, "
          f"{how['validation_sessions']:,} to validate")
    retrievals = {}
    for name in (m for m in RETRIEVERS if m in plan.params):
        params = plan.params[name]
        with clock.stage(f"validation split: {name} trained on the rest"):
            model, _, _ = fit_retriever(name, params, split.train, split.popularity, plan.progress, plan.device)
        with clock.stage(f"validation split: {name}'s top-{plan.top_k}"):
            retrievals[name] = retrieve(retriever_scores(model, params), split.test, plan.top_k)
    return ValidationRetrievals(split, how, retrievals)
