"""The worker's V-SKNN pipeline: the sessions it has seen, indexed click by click, served like a model.

Every click the worker reads goes to `observe` (the worker reads the whole clicks topic for it: docs/serving.md,
Session-kNN); `scorer` makes the `Scorer` that `SessionRecommender` serves with, for one artifact version. The
artifact gives only the version and the most clicked items (the answer for a session with no neighbour yet);
items are numbered by the index's own vocabulary, which learns every item the stream clicks, so an item no
artifact knows is suggested as soon as sessions click it, and survives any model swap.
"""

from __future__ import annotations

import threading

import numpy as np

from stream_app.inference.scoring import Scorer
from stream_app.inference.served_baseline import ItemVocabulary, ServedBaseline
from stream_app.inference.session_index import SessionIndex
from stream_app.inference.session_knn import VSKNN, VSKNNParams

PIPELINE = "vsknn"


class LiveNeighbours:
    """The last `capacity` sessions to start, and every item they clicked.

    Changed only under `lock`: the worker's event loop indexes clicks, and a version being prepared in another
    thread numbers its items and serves its smoke check under it (a memoryview of an item's sessions forbids
    resizing them meanwhile). Serving reads on the event loop, between two changes."""

    def __init__(self, capacity: int, params: VSKNNParams) -> None:
        self.vocabulary = ItemVocabulary()
        self.index = SessionIndex(capacity)
        self.model = VSKNN(self.index, params)
        self.lock = threading.Lock()

    def observe(self, session_id: str, item_id: str) -> None:
        with self.lock:
            self.index.add(session_id, self.vocabulary.add(item_id))

    def scorer(self, artifact: Scorer, window: int, params: VSKNNParams | None = None) -> ServedBaseline:
        """V-SKNN over the index (with `params`, None: the index's own), reading each session's last `window`
        clicks, as `artifact`'s version (call it under `lock`)."""
        popularity = np.zeros(len(self.vocabulary.ids) + len(artifact.item_ids), dtype=np.float32)
        numbers = [self.vocabulary.add(item_id) for item_id in artifact.item_ids]
        popularity[numbers] = artifact.popularity
        model = self.model if params is None else VSKNN(self.index, params)
        scorer = ServedBaseline(PIPELINE, artifact.version, self.vocabulary, popularity[: len(self.vocabulary.ids)],
                                model, window, artifact.graph_top_k, live_sessions=self.index.number_of)
        scorer.neighbours = self
        return scorer
