"""The worker's session-kNN pipelines (V-SKNN, STAN): the sessions it has seen, indexed click by click, served like
a model.

Every click the worker reads goes to `observe` (the worker reads the whole clicks topic for it: docs/serving.md,
Session-kNN); `scorer` makes the `Scorer` that `SessionRecommender` serves with, for one artifact version. The
artifact gives only the version and the most clicked items (the answer for a session with no neighbour yet);
items are numbered by the index's own vocabulary, which learns every item the stream clicks, so an item no
artifact knows is suggested as soon as sessions click it, and survives any model swap.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from stream_app.inference.scoring import Scorer
from stream_app.inference.served_baseline import ItemVocabulary, ServedBaseline
from stream_app.inference.session_index import SessionIndex
from stream_app.inference.session_knn import VSKNN, SessionKNN, VSKNNParams
from stream_app.inference.stan import STAN, STANParams

PIPELINE, STAN_PIPELINE = "vsknn", "stan"
KNNParams = VSKNNParams | STANParams
MODELS = {VSKNNParams: (PIPELINE, VSKNN), STANParams: (STAN_PIPELINE, STAN)}  # each pipeline, by its parameters


class LiveNeighbours:
    """The last `capacity` sessions to start, and every item they clicked.

    Changed only under `lock`: the worker's event loop indexes clicks, and a version being prepared in another
    thread numbers its items and serves its smoke check under it (a memoryview of an item's sessions forbids
    resizing them meanwhile). Serving reads on the event loop, between two changes."""

    def __init__(self, capacity: int, params: KNNParams) -> None:
        self.vocabulary = ItemVocabulary()
        self.index = SessionIndex(capacity)
        self.model = self.model_with(params)
        self.lock = threading.Lock()

    def observe(self, session_id: str, item_id: str, timestamp: float = 0.0, offset: int | None = None) -> None:
        """Index a click at `timestamp` (seconds, STAN's time) and `offset` in its partition (None: a click never
        indexed before; given, a click indexed already is skipped: `SessionIndex.add`). A click from the future (a
        clock or a unit gone wrong) counts as now: as the index's latest time it would decay every other session
        to nothing, for as long as it is in the topic's window."""
        with self.lock:
            self.index.add(session_id, self.vocabulary.add(item_id), min(timestamp, time.time()), offset)

    def model_with(self, params: KNNParams) -> SessionKNN:
        """V-SKNN or STAN (as `params` are) over the index."""
        return MODELS[type(params)][1](self.index, params)

    def scorer(self, artifact: Scorer, window: int, params: KNNParams | None = None) -> ServedBaseline:
        """V-SKNN or STAN over the index (with `params`, None: the index's own), reading each session's last
        `window` clicks, as `artifact`'s version (call it under `lock`)."""
        popularity = np.zeros(len(self.vocabulary.ids) + len(artifact.item_ids), dtype=np.float32)
        numbers = [self.vocabulary.add(item_id) for item_id in artifact.item_ids]
        popularity[numbers] = artifact.popularity
        model = self.model if params is None else self.model_with(params)
        scorer = ServedBaseline(MODELS[type(model.params)][0], artifact.version, self.vocabulary,
                                popularity[: len(self.vocabulary.ids)], model, window, artifact.graph_top_k,
                                live_sessions=self.index.number_of)
        scorer.neighbours = self
        return scorer
