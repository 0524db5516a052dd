"""The `vsknn` pipeline served by `SessionRecommender`: a click indexed a moment ago shapes the next session's
suggestion, a session is never its own neighbour, an item no artifact knows is suggested (under the catalogue's
rules, only while the catalogue shows it), and a session with no neighbour gets the artifact's popular items."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from stream_app.inference.catalogue import Catalogue
from stream_app.inference.catalogue_records import ItemRecord
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


def served(neighbours: LiveNeighbours, catalogue: Catalogue | None = None) -> SessionRecommender:
    scorer = neighbours.scorer(ARTIFACT, window=50)
    view = catalogue.view(scorer) if catalogue is not None else None
    return SessionRecommender(scorer, top_k=TOP_K, max_history=50, session_ttl=1e9, exclude_seen=True,
                              catalogue=view)


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


def test_an_item_learnt_from_the_stream_is_suggested_only_while_the_catalogue_shows_it():
    """Its record may come before the index learns the item, between that and the next batch, or after a batch
    covered it: each way it holds from the next batch on."""
    neighbours, catalogue = LiveNeighbours(1000, VSKNNParams()), Catalogue()
    recommender = served(neighbours, catalogue)
    catalogue.apply("launch-a", ItemRecord(available=False))  # no model knows it yet: it waits
    for item in ("a7", "launch-c"):
        neighbours.observe("earlier", item)
    assert suggest(recommender, neighbours, "s1", ["a7"]).items[0] == "launch-c"  # no record: shown
    for item in ("launch-a", "launch-b"):
        neighbours.observe("earlier", item)
    for item in ("launch-b", "launch-c"):  # launch-b learnt but not covered yet, launch-c covered
        catalogue.apply(item, ItemRecord(available=False))
    suggestion = suggest(recommender, neighbours, "s2", ["a7"])
    assert suggestion.items == ["a0", "a1", "a2", "a3", "a4"] and suggestion.source == "model"
    assert catalogue.items == 3
    for item in ("launch-a", "launch-b", "launch-c"):
        catalogue.apply(item, ItemRecord(available=True))
    assert suggest(recommender, neighbours, "s3", ["a7"]).items[:3] == ["launch-c", "launch-a", "launch-b"]


def test_a_canary_over_the_same_index_sees_the_records_of_the_items_learnt_since():
    neighbours, catalogue = LiveNeighbours(1000, VSKNNParams()), Catalogue()
    current, canary = served(neighbours, catalogue), served(neighbours, catalogue)
    for item in ("a7", "launch"):
        neighbours.observe("earlier", item)
    catalogue.apply("launch", ItemRecord(available=False, category="new-in", new=True))
    assert "launch" not in suggest(current, neighbours, "s1", ["a7"]).items  # the current version's view takes it
    assert "launch" not in suggest(canary, neighbours, "s2", ["a7"]).items  # the canary's from the current's
    catalogue.release(current.catalogue)  # the current version stops serving: the canary's view keeps the record
    assert catalogue.record("launch") == ItemRecord(False, False, "new-in", True) and catalogue.items == 1
    catalogue.apply("launch", ItemRecord(available=True))
    assert suggest(canary, neighbours, "s3", ["a7"]).items[0] == "launch"
