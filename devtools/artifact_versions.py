"""Variants of a real artifact for the store, gate and swap tests and the fault suite (`bench/faults.py`):
renamed, tampered with, or made worse."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from stream_app.inference.artifact_format import ITEM_IDS, MANIFEST, sha256_of


def edit_manifest(directory: Path, **changes: object) -> dict:
    path = directory / MANIFEST
    manifest = json.loads(path.read_text()) | changes
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def renamed(source: Path, dest: Path, version: str) -> Path:
    """A copy of `source` published as `version`, created now (same files, so the same model)."""
    shutil.copytree(source, dest)
    edit_manifest(dest, version=version, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return dest


def rehash(directory: Path) -> None:
    """Make the manifest's sha256s match the files again, as a careless tool would after editing them."""
    manifest = json.loads((directory / MANIFEST).read_text())
    edit_manifest(directory, files={name: sha256_of(directory / name) for name in manifest["files"]})


def corrupt(folder: Path) -> None:
    """Bit rot on the shared volume after the push: the graph's bytes change, the manifest does not."""
    graph = folder / "gru4rec.onnx"
    graph.write_bytes(graph.read_bytes()[:-64] + bytes(64))


def shuffled_vocabulary(source: Path, dest: Path, version: str, seed: int = 0) -> Path:
    """A deliberately worse model: the item ids shuffled against the model's indices (and checksums
    updated), so every suggestion names the wrong items."""
    renamed(source, dest, version)
    item_ids = json.loads((dest / ITEM_IDS).read_text())
    (dest / ITEM_IDS).write_text(json.dumps(np.random.default_rng(seed).permutation(item_ids).tolist()))
    rehash(dest)
    return dest
