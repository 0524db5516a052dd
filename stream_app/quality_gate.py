"""The quality gate: a new version is promoted only if it serves about as well as the current one.

Both versions are judged by what they serve: the held-out sessions are replayed click by click
through each version's `SessionRecommender` (the worker's own code path, so the gate follows every
serving mode the Scorer gains), and each suggestion is checked against the session's actual next
click. Recall@20 = share of suggestions holding it; MRR@20 = mean of 1/its position (0 when absent).
Every click but a session's last is a prediction, for both versions alike: a click on an item a
version does not know gets its popularity suggestion, a target it does not know is a miss. These
"served" figures therefore differ from the offline protocol's (`training.evaluate`: unseen items
dropped, full-catalogue ranks, no exclusion of seen items); they are for comparing versions.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from stream_app.events import Click
from stream_app.artifact_format import MANIFEST
from stream_app.scoring import Scorer
from stream_app.sessions import SessionRecommender
from stream_app.settings import Settings
from stream_app.suggestion import SourcedClick

logger = logging.getLogger(__name__)

CUTOFF = 20  # the gate judges Recall@20 and MRR@20
PROTOCOL = (
    f"served top-{CUTOFF} (SessionRecommender, the worker's settings) at every click of every held-out "
    "session but its last, against the next click; unknown targets count as misses"
)
SESSIONS_PER_CALL = 1024  # held-out sessions replayed per `recommend` call (bounds the batch)


@dataclass(frozen=True)
class ServedMetrics:
    version: str
    recall: float  # Recall@CUTOFF
    mrr: float  # MRR@CUTOFF
    predictions: int

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            f"recall@{CUTOFF}": self.recall,
            f"mrr@{CUTOFF}": self.mrr,
            "predictions": self.predictions,
        }


def served_top_k_metrics(
    scorer: Scorer, sessions: Sequence[Sequence[str]], settings: Settings
) -> ServedMetrics:
    """Recall@20 and MRR@20 of what `scorer` serves for every next click of `sessions` (external ids).

    The one place that evaluates a version through the serving path: the worker's recommender
    (`SessionRecommender.from_settings`), asked for the top 20, with no session expiry.
    """
    recommender = SessionRecommender.from_settings(scorer, settings, top_k=CUTOFF, session_ttl=math.inf)
    hits, reciprocal_ranks, predictions = 0, 0.0, 0
    for start in range(0, len(sessions), SESSIONS_PER_CALL):
        chunk = sessions[start : start + SESSIONS_PER_CALL]
        clicks = [
            SourcedClick(Click(str(number), str(item), 0.0), partition=0, offset=offset)
            for number, session in enumerate(chunk)
            for offset, item in enumerate(session)
        ]
        suggestions = recommender.recommend(clicks, {}, now=0.0).suggestions
        position = 0
        for session in chunk:
            for target, suggestion in zip(
                session[1:], suggestions[position : position + len(session) - 1], strict=True
            ):
                predictions += 1
                if str(target) in suggestion.items:
                    hits += 1
                    reciprocal_ranks += 1.0 / (suggestion.items.index(str(target)) + 1)
            position += len(session)
    return ServedMetrics(
        scorer.version,
        hits / predictions if predictions else 0.0,
        reciprocal_ranks / predictions if predictions else 0.0,
        predictions,
    )


@dataclass(frozen=True)
class GateDecision:
    passed: bool  # not worse than the current version by more than the tolerance (or no current version)
    forced: bool  # promoted although it did not pass
    tolerance: float
    candidate: ServedMetrics
    current: ServedMetrics | None
    held_out: dict  # what the figures were computed on: source, sessions, predictions
    decided_at: float

    @property
    def promote(self) -> bool:
        return self.passed or self.forced

    def summary(self) -> str:
        figures = f"Recall@{CUTOFF} {self.candidate.recall:.4f}, MRR@{CUTOFF} {self.candidate.mrr:.4f}"
        if self.current is not None:
            figures += (
                f" against {self.current.version}'s {self.current.recall:.4f}, {self.current.mrr:.4f}"
                f" (tolerance {self.tolerance})"
            )
        verdict = (
            "passed" if self.passed else "refused, promoted anyway (forced)" if self.forced else "refused"
        )
        return f"quality gate {verdict} for {self.candidate.version}: {figures}"

    def to_dict(self) -> dict:
        return asdict(self) | {
            "candidate": self.candidate.to_dict(),
            "current": self.current.to_dict() if self.current else None,
            "cutoff": CUTOFF,
            "protocol": PROTOCOL,
        }


def quality_gate(
    candidate: Scorer,
    current: Scorer | None,
    sessions: Sequence[Sequence[str]],
    settings: Settings,
    *,
    source: str,
    force: bool = False,
) -> GateDecision:
    """Judge `candidate` against `current` (None: nothing served yet, it passes) on the same sessions."""
    candidate_metrics = served_top_k_metrics(candidate, sessions, settings)
    current_metrics = served_top_k_metrics(current, sessions, settings) if current is not None else None
    tolerance = settings.quality_gate_tolerance
    passed = current_metrics is None or (
        candidate_metrics.recall >= current_metrics.recall - tolerance
        and candidate_metrics.mrr >= current_metrics.mrr - tolerance
    )
    decision = GateDecision(
        passed=passed,
        forced=force and not passed,
        tolerance=tolerance,
        candidate=candidate_metrics,
        current=current_metrics,
        decided_at=time.time(),
        held_out={"source": source, "sessions": len(sessions), "predictions": candidate_metrics.predictions},
    )
    if decision.forced:
        logger.warning("%s: the quality gate is overridden (force)", decision.summary())
    else:
        logger.info(decision.summary())
    return decision


def record_decision(directory: Path, decision: GateDecision) -> None:
    """Write the decision and both sets of figures into the artifact's manifest, before it is pushed
    (a pushed version never changes)."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["quality_gate"] = decision.to_dict()
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
