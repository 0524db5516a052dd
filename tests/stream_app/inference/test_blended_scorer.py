"""The blend served by `SessionRecommender`: an item the neural model never saw is suggested and a click on it is
answered, through the kNN list, and such a click leaves the session's hidden state as it was."""

from __future__ import annotations

import math

from stream_app.inference.blended_scorer import PIPELINE, BlendedScorer
from stream_app.inference.catalogue import Catalogue
from stream_app.inference.catalogue_records import ItemRecord
from stream_app.inference.events import Click
from stream_app.inference.live_knn import LiveNeighbours
from stream_app.inference.session_knn import VSKNNParams
from stream_app.inference.sessions import SessionRecommender
from stream_app.inference.suggestion import SourcedClick

NEW = "launched-this-morning"  # an item the artifact's model never saw


def served(scorer, neighbours: LiveNeighbours, weight: float = 0.5,
           catalogue: Catalogue | None = None) -> SessionRecommender:
    blended = BlendedScorer(scorer, neighbours.scorer(scorer, 50), weight)
    view = catalogue.view(blended) if catalogue is not None else None
    return SessionRecommender(blended, top_k=20, max_history=50, session_ttl=math.inf, exclude_seen=False,
                              catalogue=view)


def serve(recommender: SessionRecommender, session: str, items: list[str]):
    """The session's clicks served one batch each, as a worker serves them; the last suggestion and state."""
    table, result = {}, None
    for offset, item in enumerate(items):
        result = recommender.recommend([SourcedClick(Click(session, item, 0.0), 0, offset)], table, now=0.0)
        table.update(result.states)
    return result.suggestions[0], table[session.encode()]


def neighbours_clicking(scorer, *sessions: list[str]) -> LiveNeighbours:
    neighbours = LiveNeighbours(1000, VSKNNParams())
    for number, items in enumerate(sessions):
        for item in items:
            neighbours.observe(f"earlier-{number}", item)
    return neighbours


def test_an_item_the_model_never_saw_is_suggested_and_a_click_on_it_answered(scorer):
    known = scorer.item_ids[5]
    neighbours = neighbours_clicking(scorer, *[[known, NEW]] * 3)
    recommender = served(scorer, neighbours, weight=0.3)
    suggestion, state = serve(recommender, "s1", [known])
    assert NEW in suggestion.items[:2]  # 0.7 x 1 from the kNN list, above the neural list's best, 0.3 x 1
    assert suggestion.source == "model" and suggestion.model == PIPELINE
    assert state.model == PIPELINE
    answer, _ = serve(recommender, "s2", [NEW])
    assert answer.source == "model" and answer.items[0] == known  # the kNN list alone: its neighbours' other item
    assert answer.scores[0] == 0.7  # (1 - w) x 1: no neural list for this click


def test_a_click_the_model_does_not_know_leaves_the_hidden_state_as_it_was(scorer):
    first, second = scorer.item_ids[3], scorer.item_ids[8]
    neighbours = neighbours_clicking(scorer, [first, NEW, second])
    recommender = served(scorer, neighbours)
    _, with_new = serve(recommender, "s1", [first, NEW, second])
    _, without = serve(recommender, "s2", [first, second])
    assert with_new.hidden == without.hidden and with_new.hidden
    assert with_new.items == [first, NEW, second]


def test_an_item_the_stream_taught_is_suggested_only_while_the_catalogue_shows_it(scorer):
    known = scorer.item_ids[5]
    neighbours, catalogue = neighbours_clicking(scorer, *[[known, NEW]] * 3), Catalogue()
    recommender = served(scorer, neighbours, weight=0.3, catalogue=catalogue)
    catalogue.apply(NEW, ItemRecord(available=False))
    hidden, _ = serve(recommender, "s1", [known])
    assert NEW not in hidden.items and len(hidden.items) == 20
    catalogue.apply(NEW, ItemRecord(available=True))
    shown, _ = serve(recommender, "s2", [known])
    assert NEW in shown.items[:2]
