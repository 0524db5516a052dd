"""Places kept for new items (`stream_app.inference.new_items`): the best-scored new candidates take at most the share,
the ranking order and K are kept otherwise, places no new candidate takes go back to the ranking, and an unavailable
new item is never shown; through `SessionRecommender` on the live session-kNN, without a broker."""

from __future__ import annotations

import random

import numpy as np
import pytest

from stream_app.inference.catalogue import Catalogue
from stream_app.inference.catalogue_records import ItemRecord
from stream_app.inference.live_knn import LiveNeighbours
from stream_app.inference.new_items import new_candidates, new_places, with_new_items
from stream_app.inference.serving_rules import REFUSED, allowed_candidates
from stream_app.inference.session_knn import VSKNNParams
from stream_app.inference.sessions import SessionRecommender
from tests.stream_app.inference.test_live_knn import ARTIFACT, suggest

RANKED = list(range(10))  # candidates, best first
SCORES = [float(10 - item) for item in RANKED]


@pytest.mark.parametrize(("new", "exclude", "places", "expected"), [
    ({6, 8, 9}, set(), 2, [0, 1, 6, 8]),  # the two best new ones, however they rank; 9 does not get in
    ({1, 6, 8}, set(), 2, [0, 1, 2, 6]),  # a new item in the top K keeps its place and fills a reserved one
    ({0, 1, 2}, set(), 2, [0, 1, 2, 3]),  # more new items in the top K than places: the ranking unchanged
    ({6}, set(), 2, [0, 1, 2, 6]),  # fewer new candidates than places: the rest go back to the ranking
    ({6}, {6}, 2, [0, 1, 2, 3]),  # a new item left out (seen, refused) takes no place
    ({6, 8}, {0, REFUSED}, 1, [1, 2, 3, 6]),  # left-out items are skipped in the open places too
    ({6, 8}, set(), 0, [0, 1, 2, 3]),  # no places: the plain ranking
    ({6, 7, 8, 9}, set(), 4, [6, 7, 8, 9]),  # a share of 1: the best K new ones
])
def test_new_items_take_at_most_their_places_and_the_ranking_keeps_the_rest(new, exclude, places, expected) -> None:
    items, scores = with_new_items(RANKED, SCORES, 4, exclude, new, places)
    assert items == expected and scores == [SCORES[item] for item in expected]


def test_the_choice_is_the_best_new_items_and_the_best_of_the_rest_in_ranking_order() -> None:
    rng = random.Random(37)
    for _ in range(500):
        k, places = rng.randint(1, 8), rng.randint(0, 8)
        places = min(places, k)
        new, exclude = set(rng.sample(RANKED, rng.randint(0, 6))), set(rng.sample(RANKED, rng.randint(0, 3)))
        eligible = [item for item in RANKED if item not in exclude]
        best_new = [item for item in eligible if item in new][:places]
        rest = [item for item in eligible if item not in best_new][: k - len(best_new)]
        items, _ = with_new_items(RANKED, SCORES, k, exclude, new, places)
        assert items == sorted(best_new + rest)
        assert len(items) == min(k, len(eligible))


def test_places_are_the_share_of_k_rounded_down() -> None:
    assert [new_places(share, 20) for share in (0.0, 0.04, 0.05, 0.1, 0.29, 1.0)] == [0, 0, 1, 2, 5, 20]
    assert new_places(0.29, 100) == 29  # not 28, as 0.29 * 100 is 28.999... in floats


def test_only_rows_with_allowed_new_candidates_are_listed() -> None:
    neighbours = LiveNeighbours(10, VSKNNParams())
    catalogue = Catalogue()
    view = catalogue.view(neighbours.scorer(ARTIFACT, window=50))
    for item, record in (("a3", ItemRecord(True, new=True)), ("a4", ItemRecord(False, new=True)),
                         ("a5", ItemRecord(True, category="c", new=True))):
        catalogue.apply(item, record)
    top_items = np.array([[0, 1, 2], [3, 4, 0], [4, 5, 3]])
    allowed = allowed_candidates(view, top_items, [None, None, None])
    assert new_candidates(view, allowed) == {1: {3}, 2: {5, 3}}  # a4 unavailable: never a candidate


def served_with_share(share: float) -> tuple[LiveNeighbours, Catalogue, SessionRecommender]:
    """The live kNN serving 5 items, one place for new ones at a share of 0.2, under the catalogue's rules."""
    neighbours = LiveNeighbours(1000, VSKNNParams())
    catalogue = Catalogue()
    scorer = neighbours.scorer(ARTIFACT, window=50)
    recommender = SessionRecommender(scorer, top_k=5, max_history=50, session_ttl=1e9, exclude_seen=True,
                                     catalogue=catalogue.view(scorer), new_items_share=share)
    for item in ("a7", "a20", "a21", "a22", "a23", "a24", "launch"):  # ties: the artifact's items rank first
        neighbours.observe("earlier", item)
    return neighbours, catalogue, recommender


def test_a_new_item_the_knn_scores_below_k_gets_a_reserved_place_while_available() -> None:
    neighbours, catalogue, recommender = served_with_share(0.2)
    assert suggest(recommender, neighbours, "before", ["a7"]).items == ["a20", "a21", "a22", "a23", "a24"]
    catalogue.apply("launch", ItemRecord(available=True, new=True))
    suggestion = suggest(recommender, neighbours, "new", ["a7"])
    assert suggestion.items == ["a20", "a21", "a22", "a23", "launch"] and suggestion.source == "model"
    catalogue.apply("launch", ItemRecord(available=False, new=True))
    assert suggest(recommender, neighbours, "unavailable", ["a7"]).items == ["a20", "a21", "a22", "a23", "a24"]


def test_without_a_share_a_new_item_keeps_its_rank() -> None:
    neighbours, catalogue, recommender = served_with_share(0.0)
    catalogue.apply("launch", ItemRecord(available=True, new=True))
    assert suggest(recommender, neighbours, "s", ["a7"]).items == ["a20", "a21", "a22", "a23", "a24"]
