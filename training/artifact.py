"""A model artifact: one directory holding everything a worker needs to serve, plus its provenance.

Files:
- one serving graph per model, `{name}.onnx` (`models.export`): the retrievers gru4rec.onnx and/or
  narm.onnx, and dien.onnx, the re-ranker of one of them; the manifest's `models` says which is which;
- `{name}_training_curve.png` for each model trained in the run (none for a GRU4Rec reused from another
  artifact with `--retriever-artifact`);
- item_ids.json (index → external id), popularity.npy (click counts per index, for cold start);
- config.json (every model's hyper-parameters), metrics.json (figures, stages, epochs, data: written by
  `training.retrain_artifact`);
- manifest.json, written last, with the sha256 of every other file so a worker can refuse a corrupt or
  partial copy.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np

from stream_app.scoring import ITEM_IDS, MANIFEST, POPULARITY, sha256_of
from stream_app.settings import REPO_ROOT

CONFIG = "config.json"
METRICS = "metrics.json"


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


def write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_artifact_metadata(directory: Path, *, version: str, trained_by: str, item_ids: np.ndarray,
                            popularity: np.ndarray, config: dict, metrics: dict, models: dict[str, dict]) -> Path:
    """Write the data files and the manifest around model files already saved in `directory`.
    `trained_by` is the `code_version()` read when training started (the tree may change meanwhile)."""
    write_json(directory / ITEM_IDS, [str(i) for i in item_ids])
    np.save(directory / POPULARITY, np.asarray(popularity, dtype=np.int64))
    write_json(directory / CONFIG, config)
    write_json(directory / METRICS, metrics)
    files = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    write_json(directory / MANIFEST, {
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": trained_by,
        "models": models,
        "files": {name: sha256_of(directory / name) for name in files},
    })
    return directory / MANIFEST
