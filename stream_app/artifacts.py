"""`python -m stream_app.artifacts`: the artifact store from the command line, and publishing with the gate.

    python -m stream_app.artifacts list                     # versions, newest first; * marks the current one
    python -m stream_app.artifacts show [VERSION]           # manifest and metrics (default: the current one)
    python -m stream_app.artifacts promote VERSION [--force]
    python -m stream_app.artifacts rollback [--to VERSION]  # default: the version promoted before the current

The store is the one the settings name (NEXTCLICK_ARTIFACT_DIR, or NEXTCLICK_ARTIFACT_STORE_URL).
Promotions and rollbacks are announced on the model-updates topic (NEXTCLICK_MODEL_UPDATES_TOPIC), so
running workers swap at once. A version the quality gate refused when it was pushed is promoted only
with --force; a rollback needs no gate (it returns to a version that was served before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_app.artifact_store import ArtifactStore, Pointer, StoreError
from stream_app.model_updates import announce
from stream_app.quality_gate import GateDecision, quality_gate, record_decision
from stream_app.artifact_format import ArtifactError, verify_artifact
from stream_app.scoring import Scorer
from stream_app.settings import Settings, get_settings

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
    current_scorer = current_version_scorer(store, settings.serving_model)
    decision = quality_gate(Scorer(directory, pipeline=settings.serving_model), current_scorer, held_out, settings,
                            source=source, force=force)
    record_decision(directory, decision)
    version = store.push(directory)
    pointer = None
    if promote and decision.promote:
        pointer = promote_and_announce(store, version, settings)
    store.prune()
    return Published(store.location, version, decision, pointer)


def current_version_scorer(store: ArtifactStore, pipeline: str) -> Scorer | None:
    """The current version serving `pipeline`, loaded; None when there is none, or when it no longer loads (then any
    valid candidate beats it, and a warning says so)."""
    current = store.current()
    if current is None:
        return None
    try:
        return Scorer(store.local_copy(current.version), pipeline=pipeline)
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
    gate = store.manifest(version).get("quality_gate")
    if gate is not None and not gate["passed"]:
        if not force:
            raise StoreError(
                f"the quality gate refused {version} when it was pushed; --force promotes it anyway"
            )
        logger.warning("promoting %s although its quality gate refused it (--force)", version)
    return promote_and_announce(store, version, settings)


def rollback_and_announce(store: ArtifactStore, settings: Settings, to: str | None = None) -> Pointer:
    pointer = store.rollback(to)
    asyncio.run(announce(settings, pointer, store.location))
    return pointer


def version_line(store: ArtifactStore, version: str, current: Pointer | None) -> str:
    manifest = store.manifest(version)
    gate = manifest.get("quality_gate")
    if gate is None:
        verdict = "gate: not run"
    else:
        verdict = "gate: " + (
            "passed" if gate["passed"] else "refused, forced" if gate["forced"] else "refused"
        )
        verdict += (
            f" (Recall@20 {gate['candidate']['recall@20']:.4f}, MRR@20 {gate['candidate']['mrr@20']:.4f})"
        )
    marker = "*" if current and current.version == version else " "
    created, code = manifest.get("created_at", "?"), manifest.get("code_version", "?")
    return f"{marker} {version}  created {created}  code {code}  {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stream_app.artifacts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="versions in the store, newest first (* = current)")
    show = commands.add_parser("show", help="one version's manifest (with its gate decision) and metrics")
    show.add_argument("version", nargs="?", help="default: the current version")
    promote = commands.add_parser("promote", help="make a stored version current and announce it")
    promote.add_argument("version")
    promote.add_argument("--force", action="store_true", help="promote even if its quality gate refused it")
    rollback = commands.add_parser("rollback", help="return to the version promoted before the current one")
    rollback.add_argument("--to", metavar="VERSION", help="an earlier promoted version to return to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = get_settings()
    store = ArtifactStore.from_settings(settings)
    try:
        current = store.current()
        if args.command == "list":
            print(f"store: {store.location}")
            for version in reversed(store.versions()):
                print(version_line(store, version, current))
        elif args.command == "show":
            version = args.version or (current.version if current else None)
            if version is None:
                raise StoreError(f"nothing is current in {store.location}; name a version")
            folder = store.local_copy(version)
            print(
                json.dumps(
                    {
                        "manifest": store.manifest(version),
                        "metrics": json.loads((folder / "metrics.json").read_text())
                        if (folder / "metrics.json").is_file()
                        else None,
                    },
                    indent=2,
                )
            )
        elif args.command == "promote":
            print(f"current: {promote_checked(store, args.version, settings, force=args.force).version}")
        else:
            print(f"current: {rollback_and_announce(store, settings, args.to).version}")
    except (StoreError, ArtifactError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
