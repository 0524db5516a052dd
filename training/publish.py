"""How `python -m training.retrain` ends: the quality gate, then a push to the store and a promotion.

Without `--out`, the artifact is built in NEXTCLICK_ARTIFACT_DIR/staging/<version>, gated against the
store's current version on this run's test sessions, pushed (with the gate's decision in its
manifest), promoted and announced when the gate passes (or `--force-promote`), and the staging copy
is removed. With `--out DIR` the artifact stays in DIR and nothing is pushed (tests, the demo,
experiments), unless `--push` asks for it. A version the gate refuses is pushed but not promoted, and
retrain exits with status 3, so that a scheduled job shows up as failed.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from pathlib import Path

from stream_app.artifacts import gate_and_push
from stream_app.settings import get_settings
from training.data import ClickLog

REFUSED_EXIT_STATUS = 3


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("artifact store (NEXTCLICK_ARTIFACT_DIR or NEXTCLICK_ARTIFACT_STORE_URL)")
    group.add_argument("--push", action="store_true", help="with --out: push the artifact to the store as well")
    group.add_argument("--no-promote", action="store_true",
                       help="push without promoting (the gate still runs and is recorded)")
    group.add_argument("--force-promote", action="store_true",
                       help="promote even if the quality gate refuses (logged, and recorded in the manifest)")


def staging_dir(version: str) -> Path:
    """Where an artifact is built before it is pushed."""
    return get_settings().artifact_dir / "staging" / version


def held_out_sessions(log: ClickLog) -> list[list[str]]:
    """The log's sessions as lists of external item ids, for the quality gate."""
    offsets = log.session_offsets()
    return [[str(item) for item in log.item_ids[start:end]] for start, end in itertools.pairwise(offsets)]


def publish_trained(out: Path, test_log: ClickLog, args: argparse.Namespace) -> None:
    """Gate, push and promote the artifact retrain wrote to `out`, as the flags say."""
    if args.out is not None and not args.push:
        return
    result = gate_and_push(out, held_out_sessions(test_log), get_settings(), source=test_log.source,
                     force=args.force_promote, promote=not args.no_promote)
    print(result.decision.summary())
    state = "promoted: the current version" if result.pointer else "stored, not promoted"
    print(f"artifact {result.version} pushed to {result.store}: {state}")
    if args.out is None:
        shutil.rmtree(out)
    if not args.no_promote and not result.decision.promote:
        raise SystemExit(REFUSED_EXIT_STATUS)
