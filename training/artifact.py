"""Building an artifact after training: its version, provenance, data files and manifest.

The files and their format are `stream_app.artifact_format`'s (shared with serving); the model graphs
(`models.export`) and training curves are saved into the directory before `write_artifact_metadata`
seals it with the manifest.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np

from stream_app.artifact_format import CONFIG, ITEM_IDS, METRICS, POPULARITY, write_json, write_manifest
from stream_app.settings import REPO_ROOT


def code_version() -> str:
    """The git commit the trainer ran from (with '-dirty' when the tree had changes), or 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def new_version() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def write_artifact_metadata(directory: Path, *, version: str, trained_by: str, item_ids: np.ndarray,
                            popularity: np.ndarray, config: dict, metrics: dict, models: dict[str, dict]) -> Path:
    """Write the data files and the manifest around model files already saved in `directory`.
    `trained_by` is the `code_version()` read when training started (the tree may change meanwhile)."""
    write_json(directory / ITEM_IDS, [str(i) for i in item_ids])
    np.save(directory / POPULARITY, np.asarray(popularity, dtype=np.int64))
    write_json(directory / CONFIG, config)
    write_json(directory / METRICS, metrics)
    return write_manifest(directory, version=version, code_version=trained_by, models=models)
