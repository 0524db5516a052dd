"""A session-kNN or popularity baseline served by `SessionRecommender` as it serves an artifact's pipeline.

The same `Scorer` face (`score`, `index_of`, `select`, `popular`, ...), nothing loaded from an artifact: the
worker's live V-SKNN and STAN pipelines (`stream_app.inference.live_knn`) and the prequential replay's rebuilt baselines
(`training.prequential`) both serve through it, so that the replay measures what a worker serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from stream_app.inference.scoring import Scorer, StepResult
from stream_app.inference.session_knn import rank_in_row
from stream_app.inference.suggestion import item_hash

CHUNK = 16  # windows scored at once: numpy's per-call cost spread over them, the sorts' arrays still in cache


class ItemVocabulary:
    """External item ids and their numbers; `add` numbers a new one (a live index learns items from the stream)."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.ids: list[str] = []
        self.numbers: dict[str, int] = {}
        self.hashes: list[int] = []  # `item_hash` of each, what a session's state keeps of a suggestion
        for item_id in ids:
            self.add(str(item_id))

    def add(self, item_id: str) -> int:
        number = self.numbers.get(item_id)
        if number is None:
            number = self.numbers[item_id] = len(self.ids)
            self.ids.append(item_id)
            self.hashes.append(item_hash(item_id))
        return number


class ServedBaseline(Scorer):
    """Without a model, the popularity baseline: the most clicked items, whatever the session. With one
    (`batch_scores(prefixes, excludes)`: `stream_app.inference.session_knn.VSKNN`, `stream_app.inference.stan.STAN`),
    it reads each session's kept clicks (the recommender's window: up to `window` - 1 earlier known clicks and the
    current one) and ranks the items it scores, highest first (ties: lower number); fewer than `graph_top_k` are
    followed by the most clicked items, so that a suggestion always has its `top_k` items, as a served list has.
    `live_sessions`: session id -> number in the model's index, when the index holds the sessions being served (a
    session is never its own neighbour)."""

    def __init__(self, name: str, version: str, vocabulary: ItemVocabulary, popularity: np.ndarray,
                 model: object | None, window: int, graph_top_k: int,
                 live_sessions: Mapping[str, int] | None = None) -> None:  # no Scorer.__init__: no artifact
        self.name, self.version = name, version
        self.stateful, self.layers, self.hidden_size = False, 0, 0
        self.item_ids, self._index_of, self.item_hashes = vocabulary.ids, vocabulary.numbers, vocabulary.hashes
        self.popularity = np.asarray(popularity, dtype=np.float32)
        self.popular_order = np.argsort(-self.popularity, kind="stable")
        self._popular_order = self.popular_order.tolist()
        self.model = model
        self.window = window if model is not None else 0
        self.graph_top_k = min(graph_top_k, len(self.popularity))
        self.live_sessions = live_sessions
        self.reranker, self.measured = None, None

    @property
    def provider(self) -> str:
        return "numpy"

    def score(self, item_indices: np.ndarray, hidden: np.ndarray | None,
              windows: Sequence[Sequence[int]], session_ids: Sequence[str] = ()) -> StepResult:
        k = self.graph_top_k
        rows = len(item_indices)
        if self.model is None:
            top = self.popular_order[:k]
            return StepResult(np.tile(top, (rows, 1)), np.tile(self.popularity[top], (rows, 1)), None)
        excludes = None
        if self.live_sessions is not None:
            excludes = np.fromiter((self.live_sessions.get(session_id, -1) for session_id in session_ids),
                                   dtype=np.int64, count=rows)
        top_items = np.empty((rows, k), dtype=np.int64)
        top_scores = np.zeros((rows, k))  # float64 as computed: float32 would tie scores that differ
        for first in range(0, rows, CHUNK):
            chunk = slice(first, first + CHUNK)
            self._rank(windows[chunk], None if excludes is None else excludes[chunk], top_items[chunk],
                       top_scores[chunk])
        return StepResult(top_items, top_scores, None)

    def _rank(self, windows: Sequence[Sequence[int]], excludes: np.ndarray | None, top_items: np.ndarray,
              top_scores: np.ndarray) -> None:
        """Fill each row of `top_items` (and `top_scores`) with its window's best items, topped up."""
        k = top_items.shape[1]
        rows, items, scores = self.model.batch_scores([np.asarray(window, dtype=np.int64) for window in windows],
                                                      excludes)
        order = np.lexsort((-scores, rows))  # by row then item: stable, so ties go to the lower number
        rows = rows[order]
        rank = rank_in_row(rows)
        best = rank < k
        top_items[rows[best], rank[best]] = items[order[best]]
        top_scores[rows[best], rank[best]] = scores[order[best]]
        counts = np.bincount(rows[best], minlength=len(top_items))
        popular = self._popular_order[: 2 * k]  # k left once k scored ones are out
        for row in np.flatnonzero(counts < k).tolist():  # topped up with the most clicked items not chosen
            chosen = set(top_items[row, :counts[row]].tolist())  # np.isin: one pass per chosen item
            top_items[row, counts[row]:] = [item for item in popular if item not in chosen][: k - counts[row]]
