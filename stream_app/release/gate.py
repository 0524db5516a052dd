"""The quality gate: a new version is promoted only if it serves about as well as the current one.

Both versions are judged by what they serve (`stream_app.inference.served_quality`): the held-out sessions are
replayed click by click through each version's `SessionRecommender` (the worker's own code path, its
exclusion policy included), and each suggestion is checked against the session's actual next click:
Recall@20 and MRR@20, the same figures the worker exports live.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from stream_app.inference.artifact_format import MANIFEST
from stream_app.inference.scoring import Scorer
from stream_app.inference.served_quality import CUTOFF, PROTOCOL, ServedMetrics, served_top_k_metrics
from stream_app.settings import Settings

logger = logging.getLogger(__name__)


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
