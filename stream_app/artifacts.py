"""`python -m stream_app.artifacts`: the artifact store from the command line (over `stream_app.release`).

    python -m stream_app.artifacts list                     # versions, newest first; * current, ~ canary (share)
    python -m stream_app.artifacts show [VERSION]           # manifest and metrics (default: the current one,
                                                            # and which canary runs)
    python -m stream_app.artifacts promote VERSION [--force]
    python -m stream_app.artifacts rollback [--to VERSION]  # default: the version promoted before the current
    python -m stream_app.artifacts canary VERSION --share 0.1 [--force]  # VERSION serves 10% of sessions
    python -m stream_app.artifacts canary stop

The store is the one the settings name (NEXTCLICK_ARTIFACT_DIR, or NEXTCLICK_ARTIFACT_STORE_URL).
Promotions, rollbacks and canary starts and stops are announced on the model-updates topic
(NEXTCLICK_MODEL_UPDATES_TOPIC), so running workers follow at once. A version the quality gate refused
when it was pushed is promoted, or made the canary, only with --force; a rollback needs no gate (it
returns to a version that was served before). Promotion of the canary ends the canary; a damaged version (an
unreadable manifest, files that do not match it) is never promoted, made the canary or rolled back to, and
`list` leaves out versions whose manifest is unreadable, with one warning naming them. Any refusal or bad
input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from stream_app.cli_help import HelpFormatter, OneLineErrors, settings_or_none
from stream_app.inference.artifact_format import ArtifactError
from stream_app.release.publish import (
    canary_checked,
    promote_checked,
    rollback_and_announce,
    stop_canary_and_announce,
)
from stream_app.release.store import ArtifactStore, Canary, Pointer, StoreError


def version_line(store: ArtifactStore, version: str, current: Pointer | None, canary: Canary | None) -> str:
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
    is_canary = canary is not None and canary.version == version
    marker = "*" if current and current.version == version else "~" if is_canary else " "
    created, code = manifest.get("created_at", "?"), manifest.get("code_version", "?")
    line = f"{marker} {version}  created {created}  code {code}  {verdict}"
    return line + f"  canary: share {canary.share:g}" if is_canary else line


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="python -m stream_app.artifacts",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, help="what to do with the store")
    commands.add_parser("list", help="versions in the store, newest first (* = current, ~ = canary)")
    show = commands.add_parser("show", help="one version's manifest (with its gate decision) and metrics")
    show.add_argument("version", nargs="?", help="default: the current version (and which canary runs)")
    promote = commands.add_parser("promote", help="make a stored version current and announce it")
    promote.add_argument("version", help="a version in the store (see list)")
    promote.add_argument("--force", action="store_true", help="promote even if its quality gate refused it")
    rollback = commands.add_parser("rollback", help="return to the version promoted before the current one")
    rollback.add_argument("--to", metavar="VERSION", help="an earlier promoted version to return to")
    canary = commands.add_parser("canary", help="serve a stored version to a share of the sessions, or stop that")
    canary.add_argument("version", help="the version to serve next to the current one, or 'stop'")
    canary.add_argument("--share", type=float, help="the share of sessions it serves, between 0 and 1")
    canary.add_argument("--force", action="store_true", help="even if its quality gate refused it")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "canary" and (args.version == "stop") == (args.share is not None):
        parser.error("canary VERSION needs --share; canary stop takes none")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = settings_or_none()
    if settings is None:
        return 2
    try:
        store = ArtifactStore.from_settings(settings)
        if store.is_local and not Path(store.location).is_dir():
            raise StoreError(f"no artifact store at {store.location} (NEXTCLICK_ARTIFACT_DIR)")
        current, running = store.current(), store.canary()
        if args.command == "list":
            print(f"store: {store.location}")
            for version in reversed(store.versions()):
                print(version_line(store, version, current, running))
        elif args.command == "show":
            version = args.version or (current.version if current else None)
            if version is None:
                raise StoreError(f"nothing is current in {store.location}; name a version")
            folder = store.local_copy(version)
            shown = {
                "manifest": store.manifest(version),
                "metrics": json.loads((folder / "metrics.json").read_text())
                if (folder / "metrics.json").is_file()
                else None,
            }
            if args.version is None:
                shown["canary"] = asdict(running) if running else None
            print(json.dumps(shown, indent=2))
        elif args.command in ("promote", "rollback"):
            pointer = (
                promote_checked(store, args.version, settings, force=args.force)
                if args.command == "promote"
                else rollback_and_announce(store, settings, args.to)
            )
            print(f"current: {pointer.version}")
            if running and running.version == pointer.version:
                print(f"canary {running.version} ended: it is current now")
        elif args.version == "stop":
            stopped = stop_canary_and_announce(store, settings)
            print(f"canary {stopped.version} stopped" if stopped else "no canary was running")
        else:
            started = canary_checked(store, args.version, args.share, settings, force=args.force)
            print(f"canary: {started.version} serves {started.share:g} of the sessions next to {current.version}")
    except (StoreError, ArtifactError, OSError, ValueError) as error:  # ValueError: a damaged JSON file
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
