"""Publishing a version: gate it against the current one, push it, promote it or make it the canary, roll
back, and announce each change on the model-updates topic so that running workers follow at once.

`training.retrain` publishes through `gate_and_push`; `python -m stream_app.artifacts` is the operators'
command line over the rest. A version the quality gate refused when it was pushed is promoted, or made the
canary, only with `force`; a rollback needs no gate (it returns to a version that was served before).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_app.inference.artifact_format import ArtifactError, verify_artifact
from stream_app.inference.scoring import Scorer
from stream_app.inference.served_pipeline import served_scorer
from stream_app.release.announcements import announce, announce_canary
from stream_app.release.gate import GateDecision, quality_gate, record_decision
from stream_app.release.store import ArtifactStore, Canary, Pointer, StoreError
from stream_app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    store: str
    version: str
    decision: GateDecision
    pointer: Pointer | None  # the new pointer when promoted, else None


def gate_and_push(
    directory: Path,
    held_out: Sequence[Sequence[str]],
    settings: Settings,
    *,
    source: str,
    force: bool = False,
    promote: bool = True,
) -> Published:
    """Gate, push and (when the gate passes, or `force`) promote and announce the artifact in `directory`.

    The gate compares it with the store's current version on `held_out` (sessions of external item
    ids, described by `source`) and its decision goes into the artifact's manifest before the push,
    so the stored version carries it. Old versions are pruned afterwards.
    """
    store = ArtifactStore.from_settings(settings)
    verify_artifact(directory)
    decision = quality_gate(served_scorer(directory, settings), current_version_scorer(store, settings), held_out,
                            settings, source=source, force=force)
    record_decision(directory, decision)
    version = store.push(directory)
    pointer = None
    if promote and decision.promote:
        pointer = promote_and_announce(store, version, settings)
    store.prune()
    return Published(store.location, version, decision, pointer)


def current_version_scorer(store: ArtifactStore, settings: Settings) -> Scorer | None:
    """The current version as workers with `settings` serve it, loaded; None when there is none, or when it no
    longer loads (then any valid candidate beats it, and a warning says so)."""
    current = store.current()
    if current is None:
        return None
    try:
        return served_scorer(store.local_copy(current.version), settings)
    except Exception as error:
        logger.warning(
            "the current version %s does not load (%r): the candidate is gated against nothing",
            current.version,
            error,
        )
        return None


def promote_and_announce(store: ArtifactStore, version: str, settings: Settings) -> Pointer:
    pointer = store.promote(version)
    asyncio.run(announce(settings, pointer, store.location))
    return pointer


def promote_checked(store: ArtifactStore, version: str, settings: Settings, *, force: bool) -> Pointer:
    """Promote a stored version, refusing one its quality gate refused unless `force` (logged)."""
    check_gate(store, version, "promotes", force=force)
    check_intact(store, version)
    return promote_and_announce(store, version, settings)


def canary_checked(store: ArtifactStore, version: str, share: float, settings: Settings, *, force: bool) -> Canary:
    """Start (and announce) a canary of a stored version, with the same gate check as a promotion."""
    check_gate(store, version, "makes it the canary", force=force)
    check_intact(store, version)
    canary = store.start_canary(version, share)
    asyncio.run(announce_canary(settings, canary, store.location))
    return canary


def stop_canary_and_announce(store: ArtifactStore, settings: Settings) -> Canary | None:
    """Stop the canary and announce it; None (nothing announced) when none ran."""
    canary = store.stop_canary()
    if canary is not None:
        asyncio.run(announce_canary(settings, canary, store.location, stopped=True))
    return canary


def check_gate(store: ArtifactStore, version: str, what: str, *, force: bool) -> None:
    """Refuse a version its quality gate refused when it was pushed, unless `force` (then a warning)."""
    gate = store.manifest(version).get("quality_gate")
    if gate is not None and not gate["passed"]:
        if not force:
            raise StoreError(f"the quality gate refused {version} when it was pushed; --force {what} anyway")
        logger.warning("%s: its quality gate refused it, --force %s anyway", version, what)


def check_intact(store: ArtifactStore, version: str) -> None:
    """Refuse a stored version whose files do not match its manifest (a truncated graph, a wrong item count):
    workers would refuse to load it."""
    try:
        verify_artifact(store.local_copy(version), models=())
    except ArtifactError as error:
        raise StoreError(f"version {version} is damaged: {error}") from None


def rollback_and_announce(store: ArtifactStore, settings: Settings, to: str | None = None) -> Pointer:
    check_intact(store, store.rollback_target(to)[0])
    pointer = store.rollback(to)
    asyncio.run(announce(settings, pointer, store.location))
    return pointer
