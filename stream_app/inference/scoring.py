"""Score next items with the exported models through onnxruntime (no torch in the serving path).

The artifact's files and their graphs' inputs and outputs: `stream_app.inference.artifact_format`.

A pipeline (`PIPELINES`, the worker's NEXTCLICK_SERVING_MODEL) is a retriever, GRU4Rec (which carries
a hidden state per session) or NARM (which reads the session's last L clicks), optionally followed by
DIEN re-ranking the retriever's top N (the manifest's `serving_candidates`, else its `n_candidates`): two-stage
score = prior_weight x retriever score + DIEN's (`training.trainers.dien`), the re-ranked N served best first,
then the retriever's other candidates in its order.
The retrievers' graphs return a fixed K (larger than the served top_k) so that items the session already clicked
can be dropped and enough remain. That top K is the graph's own (exact: the whole catalogue scored), or, for a big
catalogue, the retriever's query graph followed by a search of the artifact's item index
(`stream_app.inference.item_index`, NEXTCLICK_TOPK_INDEX). The graphs score on CUDA or the CPU as
`stream_app.inference.providers` decides (NEXTCLICK_INFERENCE_PROVIDER).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Collection, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stream_app.inference import item_index
from stream_app.inference.artifact_format import ITEM_IDS, METRICS, POPULARITY, ArtifactError, verify_artifact
from stream_app.inference.item_index import ItemIndex
from stream_app.inference.providers import CPU, inference_session
from stream_app.inference.suggestion import item_hash
from stream_app.settings import Settings

MODEL_NAME = "gru4rec"  # the default pipeline, and the model every artifact carries
PIPELINES = ("gru4rec", "narm", "gru4rec+dien", "narm+dien")
# An artifact without the measured exclusion policy (as training seals it before measuring) keeps clicked
# items: shoppers often go back to a product page they saw (docs/experiments.md, Figures moved out of code).
UNMEASURED_EXCLUDE_SEEN = False
TOPK_INDEX_MIN_ITEMS: int = Settings.model_fields["topk_index_min_items"].default  # `auto`'s default threshold
INFERENCE_PROVIDER: str = Settings.model_fields["inference_provider"].default
# DIEN's rows per call on the CPU: histories of like length together, each call's tensors (rows x candidates x the
# MLP's width) within a core's cache, and the calls run side by side on one thread each (`Scorer._rerank_scores`)
RERANK_ROWS = 32


@dataclass(frozen=True, slots=True)
class StepResult:
    top_items: np.ndarray  # int64 [B, K], best first
    top_scores: np.ndarray  # float32 [B, K]
    next_hidden: np.ndarray | None  # float32 [layers, B, H]; None for a retriever without state (NARM)


def padded(windows: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each session's last `width` clicks from position 0, then zeros, [B, width]; and their lengths [B]."""
    items = np.zeros((len(windows), width), dtype=np.int64)
    lengths = np.zeros(len(windows), dtype=np.int64)
    for row, window in enumerate(windows):
        kept = window[-width:]
        items[row, : len(kept)] = kept
        lengths[row] = len(kept)
    return items, lengths


def searches_index(setting: str, n_items: int, min_items: int, spec: dict) -> bool:
    """Whether a retriever's top K comes from its item index (NEXTCLICK_TOPK_INDEX: `auto`, `exact` or `ann`);
    `auto` where the artifact has one, the catalogue is big enough and faiss is installed."""
    if setting == "ann" and "index" not in spec:
        raise ArtifactError("NEXTCLICK_TOPK_INDEX=ann, but the artifact's retriever has no item index")
    if setting == "auto":
        return "index" in spec and n_items >= min_items and item_index.installed()
    return setting == "ann"


@functools.cache
def rerank_pool(threads: int) -> ThreadPoolExecutor:
    """The threads DIEN's calls run on side by side, one pool per process and thread count: onnxruntime releases the
    GIL while it scores."""
    return ThreadPoolExecutor(threads, thread_name_prefix="rerank")


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle onnxruntime threads sleep instead of spinning: a spinning thread takes a core from the
    # event loop that feeds it (the worker's batches are small and come between Kafka calls).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    share_cpu_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


@functools.cache
def share_cpu_arena() -> None:
    """One CPU memory arena for every onnxruntime session of the process (current, canary, a swap's checks),
    grown by what a run asks for. onnxruntime's default arena grows in doubling regions and never gives one
    back, so a full batch after smaller ones (its scores are batch x catalogue floats) could take a new
    region at any moment; grown as requested, the arena has its size after the first full batch and keeps
    it, at no cost in clicks/s (docs/stream_performance.md, Session state)."""
    arena = ort.OrtArenaCfg({"arena_extend_strategy": 1})  # kSameAsRequested
    cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(cpu, arena)


def measured_policy(artifact_dir: Path, pipeline: str) -> dict | None:
    """`pipeline`'s served Recall@20 / MRR@20 per exclusion policy, as training measured them (metrics.json's
    `served`); None: not measured."""
    metrics_path = artifact_dir / METRICS
    served = json.loads(metrics_path.read_text()).get("served", {}) if metrics_path.is_file() else {}
    return served.get("pipelines", {}).get(pipeline)


class Scorer:
    """One loaded artifact serving one pipeline: its ONNX sessions, the item vocabulary and popularity."""

    # the live session index a pipeline of other sessions reads (`stream_app.inference.live_knn`), which a replay
    # of held-out sessions feeds as it serves them (`stream_app.inference.served_quality`); None: a model's alone
    neighbours = None

    def __init__(self, artifact_dir: Path, intra_op_threads: int = 0, pipeline: str = MODEL_NAME,
                 topk_index: str = "auto", topk_index_min_items: int = TOPK_INDEX_MIN_ITEMS,
                 provider: str = INFERENCE_PROVIDER) -> None:
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
        self.artifact_dir = Path(artifact_dir)
        self.name = pipeline
        retriever, _, reranker = pipeline.partition("+")
        manifest = verify_artifact(self.artifact_dir, [m for m in (retriever, reranker) if m])
        spec = manifest["models"][retriever]
        self.version: str = str(manifest["version"])
        self.stateful = retriever == "gru4rec"  # a hidden state per session, else the session's last clicks
        self.layers: int = int(spec.get("layers", 0))
        self.hidden_size: int = int(spec.get("hidden_size", 0))
        self.graph_top_k: int = int(spec["top_k"])
        self.retriever_len: int = 0 if self.stateful else int(spec["max_len"])

        self.item_ids: list[str] = [
            str(item) for item in json.loads((self.artifact_dir / ITEM_IDS).read_text())
        ]
        self._index_of = {item: index for index, item in enumerate(self.item_ids)}
        self.item_hashes = [item_hash(item) for item in self.item_ids]  # what a session's state keeps of a suggestion
        popularity = np.load(self.artifact_dir / POPULARITY)
        if popularity.shape != (len(self.item_ids),):
            raise ArtifactError(
                f"popularity.npy has shape {popularity.shape}, expected ({len(self.item_ids)},)"
            )
        self.popularity = popularity.astype(np.float32)
        self.popular_order = np.argsort(-popularity, kind="stable")  # item indices, most clicked first
        self._popular_order: list[int] = self.popular_order.tolist()

        options = session_options(intra_op_threads)
        # exact: the graph's own top K; else its query graph, and the index searched
        self.index: ItemIndex | None = None
        graph = spec["file"]
        if searches_index(topk_index, len(self.item_ids), topk_index_min_items, spec):
            self.index = ItemIndex(self.artifact_dir, spec["index"], len(self.item_ids), intra_op_threads)
            graph = spec["query_file"]
        self.session = inference_session(self.artifact_dir / graph, options, provider)
        self.reranker: ort.InferenceSession | None = None
        self.reranker_len = 0
        if reranker:
            dien = manifest["models"][reranker]
            if dien["retriever"] != retriever or int(dien["n_candidates"]) > self.graph_top_k:
                raise ArtifactError(
                    f"{self.artifact_dir}: dien re-ranks {dien['retriever']}'s top {dien['n_candidates']}, "
                    f"not {retriever}'s top {self.graph_top_k}"
                )
            # the candidates served: training may choose fewer on validation than DIEN learnt to re-rank
            self.n_candidates = int(dien.get("serving_candidates", dien["n_candidates"]))
            if not 0 < self.n_candidates <= int(dien["n_candidates"]):
                raise ArtifactError(f"{self.artifact_dir}: dien's serving_candidates must be in "
                                    f"1..{dien['n_candidates']} (its n_candidates), got {self.n_candidates}")
            # on the CPU, one thread per call and `intra_op_threads` calls side by side: DIEN's many small steps
            # keep a second thread of one call waiting more than working (docs/stream_performance.md)
            self.reranker = inference_session(self.artifact_dir / dien["file"], session_options(1), provider)
            self.rerank_threads = intra_op_threads or os.cpu_count() or 1
            self.rerank_rows = RERANK_ROWS if self.reranker.get_providers()[0] == CPU else None  # None: one call
            self.reranker_len = int(dien["max_len"])
            # a graph exported before DIEN's L was dynamic (`models.export.DIENServing`) takes exactly max_len
            width = {graph_input.name: graph_input.shape for graph_input in self.reranker.get_inputs()}["items"][1]
            self.reranker_fixed_len = isinstance(width, int)
            self.prior_weight: float | None = dien.get("prior_weight")
        # clicks (model indices) the pipeline reads per session, the current one included; 0: none
        self.window = max(self.retriever_len, self.reranker_len)
        self.measured: dict | None = measured_policy(self.artifact_dir, pipeline)

    def exclusion_policy(self, setting: str) -> tuple[bool, str]:
        """Whether to leave the session's clicked items out of its suggestions (NEXTCLICK_EXCLUDE_SEEN:
        `auto`, `true` or `false`), and why, for the log."""
        if setting != "auto":
            return setting == "true", f"NEXTCLICK_EXCLUDE_SEEN={setting}"
        if self.measured is None:
            return UNMEASURED_EXCLUDE_SEEN, (
                f"artifact {self.version} did not measure the policy for {self.name}: "
                f"{'excluding' if UNMEASURED_EXCLUDE_SEEN else 'keeping'} clicked items, the default"
            )
        keep, exclude = self.measured["keep_seen"], self.measured["exclude_seen"]
        return self.measured["policy"] == "exclude_seen", (
            f"measured by training: Recall@20 / MRR@20 {keep['recall@20']:.4f} / {keep['mrr@20']:.4f} keeping "
            f"clicked items, {exclude['recall@20']:.4f} / {exclude['mrr@20']:.4f} excluding them"
        )

    def offline_figures(self, exclude_seen: bool) -> dict | None:
        """Training's served figures for this pipeline under a policy (None: not measured)."""
        return self.measured["exclude_seen" if exclude_seen else "keep_seen"] if self.measured else None

    @property
    def provider(self) -> str:
        """The onnxruntime provider the retriever scores on, as it got it (`stream_app.inference.providers`)."""
        return self.session.get_providers()[0]

    def index_of(self, item_id: str) -> int | None:
        """The model's index of an external item id; None for items the model never saw."""
        return self._index_of.get(item_id)

    def known_indices(self, item_ids: Sequence[str]) -> list[int]:
        """The model's indices of `item_ids`, in order, leaving out the items it never saw."""
        return [index for item in item_ids if (index := self._index_of.get(item)) is not None]

    def zero_hidden(self, batch: int) -> np.ndarray:
        return np.zeros((self.layers, batch, self.hidden_size), dtype=np.float32)

    def _retrieve(self, inputs: dict[str, np.ndarray], state: list[str]) -> tuple[np.ndarray, ...]:
        """The retriever's top items and scores, then its `state` outputs, from the graph or through the index."""
        if self.index is None:
            return tuple(self.session.run(["top_items", "top_scores", *state], inputs))
        query, *rest = self.session.run(["query", *state], inputs)
        return (*self.index.top(query, self.graph_top_k), *rest)

    def step(self, item_indices: np.ndarray, hidden: np.ndarray) -> StepResult:
        """Advance B sessions by one click each in a single model call."""
        top_items, top_scores, next_hidden = self._retrieve(
            {
                "item": np.ascontiguousarray(item_indices, dtype=np.int64),
                "hidden": np.ascontiguousarray(hidden, dtype=np.float32),
            },
            ["next_hidden"],
        )
        return StepResult(top_items, top_scores, next_hidden)

    def score(self, item_indices: np.ndarray, hidden: np.ndarray | None,
              windows: Sequence[Sequence[int]], session_ids: Sequence[str] = ()) -> StepResult:
        """The pipeline's top items for B sessions at one click each: `item_indices` [B] that click,
        `hidden` [layers, B, H] the states before it (stateful retriever), `windows` each session's
        last `window` known clicks up to and including it (when `window` > 0). `session_ids`: read only
        by a pipeline of other sessions (`stream_app.inference.served_baseline`), which leaves each one out."""
        if self.stateful:
            result = self.step(item_indices, hidden)
        else:
            # the retriever reads its own last L clicks, however many more the re-ranker reads
            items, lengths = padded(windows, min(self.retriever_len, max(map(len, windows))))
            top_items, top_scores = self._retrieve({"items": items, "lengths": lengths}, [])
            result = StepResult(top_items, top_scores, None)
        return result if self.reranker is None else self._rerank(result, windows)

    def _rerank_scores(self, windows: Sequence[Sequence[int]], candidates: np.ndarray) -> np.ndarray:
        """DIEN's scores [B, N] of `candidates` [B, N]: on the CPU, the rows sorted by history length and scored
        `rerank_rows` at a time, up to `rerank_threads` calls at once."""

        def call(rows: Sequence[int]) -> np.ndarray:
            # as the retriever: the rows' longest history, the graph's loop running over the real clicks only
            longest = min(self.reranker_len, max(len(windows[row]) for row in rows))
            items, lengths = padded([windows[row] for row in rows],
                                    self.reranker_len if self.reranker_fixed_len else longest)
            return self.reranker.run(["scores"], {"items": items, "lengths": lengths,
                                                  "candidates": np.ascontiguousarray(candidates[rows])})[0]

        if self.rerank_rows is None or len(windows) <= self.rerank_rows:
            return call(range(len(windows)))
        order = sorted(range(len(windows)), key=lambda row: len(windows[row]), reverse=True)
        calls = [order[start : start + self.rerank_rows] for start in range(0, len(order), self.rerank_rows)]
        scored = rerank_pool(self.rerank_threads).map(call, calls) if self.rerank_threads > 1 else map(call, calls)
        scores = np.empty(candidates.shape, dtype=np.float32)
        for rows, call_scores in zip(calls, scored, strict=True):
            scores[rows] = call_scores
        return scores

    def _rerank(self, retrieved: StepResult, windows: Sequence[Sequence[int]]) -> StepResult:
        candidates = np.ascontiguousarray(retrieved.top_items[:, : self.n_candidates])
        scores = self._rerank_scores(windows, candidates)
        if self.prior_weight is not None:
            scores = scores + np.float32(self.prior_weight) * retrieved.top_scores[:, : self.n_candidates]
        order = np.argsort(-scores, axis=1, kind="stable")
        reranked, reranked_scores = np.take_along_axis(candidates, order, axis=1), np.take_along_axis(scores, order, 1)
        # the retriever's other candidates follow in its order, at the re-ranked list's lowest score (as offline:
        # `training.evaluation.evaluate.reranked_ranks`): a count under top_k still fills a suggestion
        rest = retrieved.top_items[:, self.n_candidates :]
        return StepResult(
            np.concatenate([reranked, rest], axis=1),
            np.concatenate([reranked_scores, np.repeat(reranked_scores[:, -1:], rest.shape[1], axis=1)], axis=1),
            retrieved.next_hidden,
        )

    def rebuild_hidden(self, sessions: Sequence[Sequence[int]]) -> np.ndarray:
        """The hidden states [layers, B, H] after each session's clicks, from a zero state; rebuilds
        state for a new model. The sessions step together: one model call per click position."""
        hidden = self.zero_hidden(len(sessions))
        for position in range(max(map(len, sessions), default=0)):
            rows = [row for row, items in enumerate(sessions) if len(items) > position]
            items = np.array([sessions[row][position] for row in rows], dtype=np.int64)
            hidden[:, rows, :] = self.step(items, hidden[:, rows, :]).next_hidden
        return hidden

    @staticmethod
    def select(
        top_items: Sequence[int] | np.ndarray,
        top_scores: Sequence[float] | np.ndarray,
        k: int,
        exclude: Collection[int] = (),
    ) -> tuple[list[int], list[float]]:
        """The best k of one row of the graph's over-fetched top-K, leaving out `exclude`. The worker
        passes lists (one `tolist()` per batch costs less than numpy per row)."""
        if isinstance(top_items, np.ndarray):
            top_items, top_scores = top_items.tolist(), np.asarray(top_scores).tolist()
        # most rows exclude nothing of their first k (a set's check of them runs in C)
        if not exclude or (isinstance(exclude, AbstractSet) and exclude.isdisjoint(top_items[:k])):
            return list(top_items[:k]), list(top_scores[:k])
        kept = list(islice(((item, score) for item, score in zip(top_items, top_scores) if item not in exclude), k))
        return [item for item, _ in kept], [score for _, score in kept]

    def popular(self, k: int, exclude: Collection[int] = ()) -> tuple[list[int], list[float]]:
        """Cold start: the k most clicked training items (click counts as scores), minus `exclude`."""
        order = self._popular_order[: k + len(exclude)]
        return self.select(order, self.popularity[order].tolist(), k, exclude)
