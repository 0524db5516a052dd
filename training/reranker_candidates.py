"""How many of its retriever's candidates DIEN re-ranks when serving, chosen on sessions it never saw.

DIEN trains on the retriever's top N (`DIENTraining.n_candidates`), and its cost when serving grows with the
candidates it scores: most of what re-ranking gains comes from the first few dozen, so serving the top N is
paying for candidates that rarely move into the top 20. Under stacking, the latest `validation_fraction` of
DIEN's sessions (already unseen by the fold retriever that gave their candidates) are held out of DIEN's training
too; the served count is the smallest of `candidate_counts` (up to N) whose Recall@20 and MRR@20 on them are
each within `candidates_tolerance` of the best count's; with `refit` (`training.model_training`) DIEN then trains
again on every stacked session, the validation ones too. The count goes into the manifest (`serving_candidates`)
and the serving pipeline (`stream_app.inference.scoring`) re-ranks that many.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.data.click_log import Sessions
from training.data.prefixes import Prefixes
from training.evaluation.evaluate import RankingMetrics, Retrieval, reranked_ranks
from training.trainers.dien import DIENTraining

CUTOFF = 20


@dataclass(frozen=True)
class HeldOut:
    """DIEN's training sessions and their candidates, and the validation sessions held out of them (None:
    nothing held out)."""

    sessions: Sessions
    retrieved: Retrieval
    validation: Sessions | None = None
    validation_retrieved: Retrieval | None = None


def held_out(params: DIENTraining, sessions: Sessions, retrieved: Retrieval) -> HeldOut:
    """The latest `validation_fraction` of `sessions` (with the rows of `retrieved` for their prefixes) apart."""
    kept = round((1 - params.validation_fraction) * sessions.n_sessions)
    if not params.validation_fraction or kept in (0, sessions.n_sessions):
        return HeldOut(sessions, retrieved)
    training, validation = sessions.split_at(kept)
    rows = len(Prefixes.of(training, params.max_len))
    return HeldOut(training, _rows(retrieved, slice(0, rows)), validation,
                   _rows(retrieved, slice(rows, len(retrieved.ranks))))


def _rows(retrieved: Retrieval, rows: slice) -> Retrieval:
    return Retrieval(retrieved.ranks[rows], retrieved.top[rows], retrieved.top_scores[rows])


@dataclass(frozen=True)
class CandidateChoice:
    count: int  # the served count
    figures: dict[int, RankingMetrics]  # each count's validation figures

    def to_dict(self) -> dict:
        return {"serving_candidates": self.count, "tolerance_metric": f"recall@{CUTOFF}, mrr@{CUTOFF}",
                "validation": {str(n): {"recall@20": m.recall[CUTOFF], "mrr@20": m.mrr[CUTOFF],
                                        "n_predictions": m.n_predictions} for n, m in self.figures.items()}}

    def describe(self) -> str:
        rows = ", ".join(f"{n}: {m.recall[CUTOFF]:.4f} / {m.mrr[CUTOFF]:.4f}" for n, m in self.figures.items())
        return (f"dien's served candidates, chosen on validation (Recall@20 / MRR@20 per count): {rows}; "
                f"serving {self.count}")


def choose_count(model: torch.nn.Module, params: DIENTraining, data: HeldOut,
                 prior_weight: float | None) -> CandidateChoice:
    """The served count (`params.n_candidates` when nothing was held out)."""
    if data.validation is None:
        return CandidateChoice(params.n_candidates, {})
    counts = sorted({n for n in params.candidate_counts if n < params.n_candidates} | {params.n_candidates})
    figures = {n: RankingMetrics.from_ranks(f"top {n}", reranked_ranks(model, params.max_len, data.validation,
                                                                       data.validation_retrieved.best(n),
                                                                       prior_weight), 0, (CUTOFF,))
               for n in counts}
    best_recall = max(m.recall[CUTOFF] for m in figures.values())
    best_mrr = max(m.mrr[CUTOFF] for m in figures.values())
    tolerance = params.candidates_tolerance
    count = next(n for n, m in figures.items()
                 if m.recall[CUTOFF] >= best_recall - tolerance and m.mrr[CUTOFF] >= best_mrr - tolerance)
    return CandidateChoice(count, figures)
