"""The artifact format: what a model artifact directory holds, and how it is written and verified.

The one home of the format, imported by training (which writes artifacts) and serving (which reads
them); no torch. An artifact is a directory:

    gru4rec.onnx     inputs  item int64[B], hidden float32[layers, B, H]
                     outputs top_items int64[B, K], top_scores float32[B, K], next_hidden like hidden
    narm.onnx        inputs  items int64[B, L] (clicks from position 0, then padding), lengths int64[B]
                     outputs top_items int64[B, K], top_scores float32[B, K]
    dien.onnx        inputs  items int64[B, L] (L ≤ max_len, as narm's), lengths int64[B], candidates int64[B, N]
                     outputs scores float32[B, N]
    item_ids.json    external item ids; index i of the models is item_ids[i]
    popularity.npy   int64 click counts per item index: the cold-start ranking
    config.json      the hyper-parameters every model was trained with
    metrics.json     the offline evaluation (`training.retrain`), with `served`: every pipeline the
                     artifact can serve, judged through the serving path on the test clicks keeping
                     and excluding already-clicked items, and the better policy:
                     {"served": {"pipelines": {pipeline: {"keep_seen": {"recall@20", "mrr@20",
                      "predictions"}, "exclude_seen": {...}, "policy": "keep_seen" | "exclude_seen"}}, ...}}
    {name}.pt        each model's checkpoint (its config and torch weights: what an incremental update
                     continues from; serving never reads it), named by the model's "weights" field
    {name}_training_curve.png   each trained model's loss per epoch
    replay.json      a uniform sample of the sessions the version's lineage trained on, which an
                     incremental update replays so as not to forget: {"seen": n, "sessions": [[item id, ...]]}
    manifest.json    {"version", "created_at", "code_version", "models": {name: {"file", ...}},
                      "lineage": {"kind": "full" | "incremental", "parent": version | null,
                                  "clicks": where its training clicks end},
                      "serving_pipeline": {"pipeline", "retriever", "weight", "vsknn"} (optional: the
                                  pipeline chosen on validation, which NEXTCLICK_SERVING_MODEL=artifact serves;
                                  `stream_app.inference.served_pipeline.ServingPipeline`),
                      "files": {file name: sha256}}, written last

The manifest's sha256 of every other file lets a worker refuse a corrupt or partial copy.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

MANIFEST = "manifest.json"
ITEM_IDS = "item_ids.json"
POPULARITY = "popularity.npy"
CONFIG = "config.json"
METRICS = "metrics.json"
REPLAY = "replay.json"
EXCLUSION_POLICIES = ("keep_seen", "exclude_seen")  # metrics.json's served figures, per pipeline


def weights_file(model_entry: dict) -> str:
    """Where a model's checkpoint goes: beside its graph, `.pt` for `.onnx`."""
    return Path(model_entry["file"]).with_suffix(".pt").name


class ArtifactError(RuntimeError):
    """The artifact directory is incomplete, corrupt or does not match the contract."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_manifest(directory: Path, *, version: str, code_version: str, models: dict[str, dict],
                   lineage: dict | None = None, serving_pipeline: dict | None = None) -> Path:
    """Seal `directory`: a manifest naming its models, where its training data ends (`lineage`), the pipeline
    chosen to serve it (`serving_pipeline`, when one was chosen), and the sha256 of every other file in it."""
    files = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    write_json(directory / MANIFEST, {
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version,
        "models": models,
        "files": {name: sha256_of(directory / name) for name in files},
    } | ({"lineage": lineage} if lineage is not None else {})
      | ({"serving_pipeline": serving_pipeline} if serving_pipeline is not None else {}))
    return directory / MANIFEST


def verify_artifact(artifact_dir: Path, models: Sequence[str] = ("gru4rec",)) -> dict:
    """Read the manifest and check every listed file against its sha256, that it has `models`, and that every
    model's `n_items` is the length of item_ids.json."""
    manifest_path = artifact_dir / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{artifact_dir} has no manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ArtifactError(f"{manifest_path} is unreadable: {error}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path} is not a JSON object")
    for name, expected in manifest.get("files", {}).items():
        path = artifact_dir / name
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in the manifest but missing")
        if sha256_of(path) != expected:
            raise ArtifactError(f"{path} does not match its sha256 in the manifest")
    for model in models:
        if model not in manifest.get("models", {}):
            raise ArtifactError(f"{manifest_path} has no {model!r} model")
    counts = {name: entry["n_items"] for name, entry in manifest.get("models", {}).items() if "n_items" in entry}
    if counts and ITEM_IDS in manifest.get("files", {}):
        n_items = len(json.loads((artifact_dir / ITEM_IDS).read_text()))
        if wrong := {name: count for name, count in counts.items() if count != n_items}:
            raise ArtifactError(f"{artifact_dir}: {ITEM_IDS} holds {n_items} items, the models say {wrong}")
    return manifest
