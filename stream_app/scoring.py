"""Score next items with the exported GRU4Rec through onnxruntime (no torch in the serving path).

An artifact is a directory written by `training.retrain`:

    gru4rec.onnx     inputs  item int64[B], hidden float32[layers, B, H]
                     outputs top_items int64[B, K], top_scores float32[B, K], next_hidden like hidden
    item_ids.json    external item ids; index i of the model is item_ids[i]
    popularity.npy   int64 click counts per item index: the cold-start ranking
    manifest.json    {"version", "models": {"gru4rec": {"file", "layers", "hidden_size", "top_k"}},
                      "files": {name: sha256}}

The graph returns a fixed K (larger than the served top_k) so that items the session already
clicked can be dropped and enough remain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODEL_NAME = "gru4rec"
# The artifact's file names: `training.artifact` writes what this module reads.
MANIFEST = "manifest.json"
ITEM_IDS = "item_ids.json"
POPULARITY = "popularity.npy"


class ArtifactError(RuntimeError):
    """The artifact directory is incomplete, corrupt or does not match the contract."""


@dataclass(frozen=True, slots=True)
class StepResult:
    top_items: np.ndarray  # int64 [B, K], best first
    top_scores: np.ndarray  # float32 [B, K]
    next_hidden: np.ndarray  # float32 [layers, B, H]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_artifact(artifact_dir: Path) -> dict:
    """Read the manifest and check every listed file against its sha256; return the manifest."""
    manifest_path = artifact_dir / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{artifact_dir} has no manifest.json")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest.get("files", {}).items():
        path = artifact_dir / name
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in the manifest but missing")
        if sha256_of(path) != expected:
            raise ArtifactError(f"{path} does not match its sha256 in the manifest")
    if MODEL_NAME not in manifest.get("models", {}):
        raise ArtifactError(f"{manifest_path} has no {MODEL_NAME!r} model")
    return manifest


def preferred_providers() -> list[str]:
    """CUDA when this onnxruntime build and machine have it, CPU always as the fallback."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class Scorer:
    """One loaded artifact: the ONNX session plus the item vocabulary and popularity ranking."""

    name = MODEL_NAME

    def __init__(self, artifact_dir: Path, intra_op_threads: int = 0) -> None:
        self.artifact_dir = Path(artifact_dir)
        manifest = verify_artifact(self.artifact_dir)
        spec = manifest["models"][MODEL_NAME]
        self.version: str = str(manifest["version"])
        self.layers: int = int(spec["layers"])
        self.hidden_size: int = int(spec["hidden_size"])
        self.graph_top_k: int = int(spec["top_k"])

        self.item_ids: list[str] = [
            str(item) for item in json.loads((self.artifact_dir / ITEM_IDS).read_text())
        ]
        self._index_of = {item: index for index, item in enumerate(self.item_ids)}
        popularity = np.load(self.artifact_dir / POPULARITY)
        if popularity.shape != (len(self.item_ids),):
            raise ArtifactError(
                f"popularity.npy has shape {popularity.shape}, expected ({len(self.item_ids)},)"
            )
        self.popularity = popularity.astype(np.float32)
        self._popular_order = np.argsort(-popularity, kind="stable")

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(
            str(self.artifact_dir / spec["file"]), sess_options=options, providers=preferred_providers()
        )

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def index_of(self, item_id: str) -> int | None:
        """The model's index of an external item id; None for items the model never saw."""
        return self._index_of.get(item_id)

    def zero_hidden(self, batch: int) -> np.ndarray:
        return np.zeros((self.layers, batch, self.hidden_size), dtype=np.float32)

    def step(self, item_indices: np.ndarray, hidden: np.ndarray) -> StepResult:
        """Advance B sessions by one click each in a single model call."""
        top_items, top_scores, next_hidden = self.session.run(
            ["top_items", "top_scores", "next_hidden"],
            {
                "item": np.ascontiguousarray(item_indices, dtype=np.int64),
                "hidden": np.ascontiguousarray(hidden, dtype=np.float32),
            },
        )
        return StepResult(top_items, top_scores, next_hidden)

    def replay(self, sessions: Sequence[Sequence[int]]) -> np.ndarray:
        """The hidden states [layers, B, H] after each session's clicks, from a zero state; rebuilds
        state for a new model. The sessions step together: one model call per click position."""
        hidden = self.zero_hidden(len(sessions))
        for position in range(max(map(len, sessions), default=0)):
            rows = [row for row, items in enumerate(sessions) if len(items) > position]
            items = np.array([sessions[row][position] for row in rows], dtype=np.int64)
            hidden[:, rows, :] = self.step(items, hidden[:, rows, :]).next_hidden
        return hidden

    def select(
        self, top_items: np.ndarray, top_scores: np.ndarray, k: int, exclude: Collection[int] = ()
    ) -> tuple[list[int], list[float]]:
        """The best k of one row of the graph's over-fetched top-K, leaving out `exclude`."""
        keep = ~np.isin(top_items, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
        return top_items[keep][:k].tolist(), top_scores[keep][:k].tolist()

    def popular(self, k: int, exclude: Collection[int] = ()) -> tuple[list[int], list[float]]:
        """Cold start: the k most clicked training items (click counts as scores), minus `exclude`."""
        order = self._popular_order[: k + len(exclude)]
        return self.select(order, self.popularity[order], k, exclude)
