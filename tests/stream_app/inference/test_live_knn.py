"""The `vsknn` pipeline served by `SessionRecommender`: a click indexed a moment ago shapes the next session's
suggestion, a session is never its own neighbour, an item no artifact knows is suggested, and a session with no
neighbour gets the artifact's popular items."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from stream_app.inference.events import Click
from stream_app.inference.live_knn import PIPELINE, LiveNeighbours
from stream_app.inference.session_knn import VSKNNParams
from stream_app.inference.sessions import SessionRecommender
from stream_app.inference.suggestion import SourcedClick

TOP_K = 5
ARTIFACT = SimpleNamespace(  # what the pipeline reads of an artifact's Scorer
    item_ids=[f"a{i}" for i in range(30)], popularity=np.arange(30, 0, -1, dtype=np.float32), version="v1",
    graph_top_k=50,
)


def served(neighbours: LiveNeighbours) -> SessionRecommender:
    scorer = neighbours.scorer(ARTIFACT, window=50)
    return SessionRecommender(scorer, top_k=TOP_K, max_history=50, session_ttl=1e9, exclude_seen=True)


def suggest(recommender: SessionRecommender, neighbours: LiveNeighbours, session: str, items: list[str]):
    """Serve a session's clicks one at a time, as the worker does: each click is indexed, then answered."""
    table, suggestion = {}, None
    for offset, item in enumerate(items):
        neighbours.observe(session, item)
        result = recommender.recommend([SourcedClick(Click(session, item, 0.0), 0, offset)], table, now=0.0)
        table.update(result.states)
        [suggestion] = result.suggestions
    return suggestion


def test_a_session_of_a_moment_ago_shapes_the_next_one_and_new_items_are_suggested():
    neighbours = LiveNeighbours(1000, VSKNNParams())
    recommender = served(neighbours)
    assert recommender.scorer.name == PIPELINE
    first = suggest(recommender, neighbours, "s1", ["a7"])  # nobody else clicked a7: the popular items
    assert first.items == ["a0", "a1", "a2", "a3", "a4"] and first.source == "model"
    for item in ("a7", "new-1", "a20"):
        neighbours.observe("earlier", item)
    suggestion = suggest(recommender, neighbours, "s2", ["a7"])
    assert suggestion.items[:2] == ["a20", "new-1"]  # the earlier session's other items (ties: lower number)
    assert suggestion.items[2:] == ["a0", "a1", "a2"]  # then the popular ones


def test_a_session_is_not_its_own_neighbour():
    neighbours = LiveNeighbours(1000, VSKNNParams())
    recommender = served(neighbours)
    suggestion = suggest(recommender, neighbours, "alone", ["a9", "a8"])  # indexed, but nobody else's
    assert suggestion.items == ["a0", "a1", "a2", "a3", "a4"]
