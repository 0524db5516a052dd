"""A neural retriever and V-SKNN served as one pipeline, their lists fused per click by `stream_app.inference.blend`.

The same `Scorer` face as any pipeline, so `SessionRecommender` serves it unchanged. Items are numbered by the
kNN's vocabulary (the live index's: the artifact's items and every item the stream clicked), so an item the neural
model never saw is suggested, and a click on it answered, through its kNN score. The neural model sees its own
numbers: each click and window is translated, and a click it does not know leaves its row of the neural list empty
and its hidden state as it was (as `SessionRecommender` does for a model pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream_app.inference.blend import NO_ITEM, blend
from stream_app.inference.scoring import Scorer, StepResult
from stream_app.inference.served_baseline import ServedBaseline

PIPELINE = "blend"


class BlendedScorer(Scorer):
    """`neural` (an artifact's retriever pipeline) and `knn` (V-SKNN over an index whose vocabulary holds every
    item of `neural`), fused with the neural weight `weight`; suggestions carry the neural artifact's version."""

    def __init__(self, neural: Scorer, knn: ServedBaseline, weight: float) -> None:  # no Scorer.__init__
        self.neural, self.knn, self.weight = neural, knn, weight
        self.name, self.version = PIPELINE, neural.version
        self.stateful, self.layers, self.hidden_size = neural.stateful, neural.layers, neural.hidden_size
        self.item_ids, self._index_of, self.item_hashes = knn.item_ids, knn._index_of, knn.item_hashes
        self.popularity, self.popular_order, self._popular_order = knn.popularity, knn.popular_order, knn._popular_order
        self.graph_top_k = min(neural.graph_top_k, knn.graph_top_k)
        self.window = max(neural.window, knn.window)
        self.neighbours = knn.neighbours
        self.reranker, self.measured = None, None
        self.to_knn = np.fromiter((knn.index_of(item) for item in neural.item_ids), dtype=np.int64,
                                  count=len(neural.item_ids))
        self.to_neural = np.full(len(knn.item_ids), NO_ITEM, dtype=np.int64)  # items numbered later: unknown
        self.to_neural[self.to_knn] = np.arange(len(neural.item_ids))

    @property
    def provider(self) -> str:
        return self.neural.provider

    def neural_numbers(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        """The neural model's number of each item, `NO_ITEM` for those it does not know."""
        items = np.asarray(items, dtype=np.int64)
        known = items < len(self.to_neural)
        return np.where(known, self.to_neural[np.where(known, items, 0)], NO_ITEM)

    def neural_clicks(self, clicks: Sequence[int]) -> np.ndarray:
        """The clicks the neural model knows, in its numbers (the others are skipped, as the recommender skips
        clicks a model pipeline does not know)."""
        numbers = self.neural_numbers(clicks)
        return numbers[numbers != NO_ITEM]

    def score(self, item_indices: np.ndarray, hidden: np.ndarray | None,
              windows: Sequence[Sequence[int]], session_ids: Sequence[str] = ()) -> StepResult:
        clicks = self.neural_numbers(item_indices)
        known = np.flatnonzero(clicks != NO_ITEM)
        k = self.neural.graph_top_k
        neural_items = np.full((len(clicks), k), NO_ITEM, dtype=np.int64)
        neural_scores = np.zeros((len(clicks), k), dtype=np.float32)
        next_hidden = None if hidden is None else hidden.copy()
        if len(known):
            neural_windows = ([self.neural_clicks(windows[row])[-self.neural.window:] for row in known]
                              if self.neural.window else [])
            result = self.neural.score(clicks[known], None if hidden is None else hidden[:, known], neural_windows)
            neural_items[known] = self.to_knn[result.top_items]
            neural_scores[known] = result.top_scores
            if result.next_hidden is not None:
                next_hidden[:, known] = result.next_hidden
        if self.knn.window < self.window:  # the neural model reads longer windows than V-SKNN
            windows = [window[-self.knn.window:] for window in windows]
        knn = self.knn.score(item_indices, None, windows, session_ids)
        top_items, top_scores = blend(neural_items, neural_scores, knn.top_items, knn.top_scores, self.weight,
                                      self.graph_top_k)
        return StepResult(top_items, top_scores, next_hidden)

    def rebuild_hidden(self, sessions: Sequence[Sequence[int]]) -> np.ndarray:
        return self.neural.rebuild_hidden([self.neural_clicks(session).tolist() for session in sessions])
