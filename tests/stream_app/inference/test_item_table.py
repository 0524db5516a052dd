"""The item table and the rules at serving time, on a real (tiny) artifact without a broker: hidden items are never
suggested, a suggestion keeps its K items (the model's next candidates, then popular ones), clicks' rules hold, an
empty catalogue changes nothing, new items get the share's places, and records survive a change of the served
model."""

from __future__ import annotations

import itertools

import numpy as np

from stream_app.inference.catalogue import Catalogue
from stream_app.inference.catalogue_records import ItemRecord
from stream_app.inference.events import Click, ClickRules
from stream_app.inference.scoring import Scorer
from stream_app.inference.sessions import SessionRecommender
from stream_app.inference.suggestion import SourcedClick, Suggestion

TOP_K = 20
HIDDEN = ItemRecord(available=False)
_offsets = itertools.count()


def engine(scorer: Scorer, catalogue: Catalogue | None, new_items_share: float = 0.0) -> SessionRecommender:
    view = catalogue.view(scorer) if catalogue is not None else None
    return SessionRecommender(scorer, top_k=TOP_K, max_history=50, session_ttl=1800.0, exclude_seen=True,
                              catalogue=view, new_items_share=new_items_share)


def served(recommender: SessionRecommender, items: list[str], rules: ClickRules | None = None) -> list[Suggestion]:
    """One session clicking `items`, one batch per click; the last click carries `rules`."""
    table: dict = {}
    suggestions = []
    for position, item in enumerate(items):
        click = Click("s1", item, 1.0, rules=rules if position == len(items) - 1 else None)
        result = recommender.recommend([SourcedClick(click, 0, next(_offsets))], table, now=1.0)
        table.update(result.states)
        suggestions += result.suggestions
    return suggestions


def last_candidates(scorer: Scorer, clicks: list[str]) -> list[str]:
    """The graph's whole top N after a session's last click, best first."""
    hidden_state = scorer.zero_hidden(1)
    for item in clicks:
        step = scorer.step(np.array([scorer.index_of(item)]), hidden_state)
        hidden_state = step.next_hidden
    return [scorer.item_ids[i] for i in step.top_items[0].tolist()]


def test_an_empty_catalogue_changes_no_suggestion(scorer: Scorer) -> None:
    clicks = scorer.item_ids[5:9] + ["not-an-item"]
    plain = served(engine(scorer, None), clicks)
    ruled = served(engine(scorer, Catalogue()), clicks)
    assert [(s.items, s.scores, s.source) for s in ruled] == [(s.items, s.scores, s.source) for s in plain]


def test_hidden_items_make_way_for_the_models_next_candidates(scorer: Scorer) -> None:
    clicks = scorer.item_ids[5:8]
    [*_, before] = served(engine(scorer, None), clicks)
    catalogue = Catalogue()
    catalogue.apply(before.items[0], HIDDEN)
    catalogue.apply(before.items[3], ItemRecord(available=True, blocked=True))
    catalogue.apply(before.items[5], ItemRecord(available=True, category="shown"))
    [*_, after] = served(engine(scorer, catalogue), clicks)
    kept = [item for position, item in enumerate(before.items) if position not in (0, 3)]
    assert after.items[: len(kept)] == kept and len(after.items) == TOP_K and after.source == "model"
    assert before.items[0] not in after.items and before.items[3] not in after.items


def test_hidden_candidates_far_down_the_list_are_skipped_in_ranking_order(scorer: Scorer) -> None:
    clicks = scorer.item_ids[5:8]
    ranked = [item for item in last_candidates(scorer, clicks) if item not in clicks]
    catalogue = Catalogue()
    hidden = set(ranked[: 2 * TOP_K]) - set(ranked[3 : 2 * TOP_K : 4])  # far more than the K served
    for item in hidden:
        catalogue.apply(item, HIDDEN)
    rules = ClickRules(exclude_items=frozenset(ranked[2 * TOP_K : 2 * TOP_K + 3]))
    [*_, suggestion] = served(engine(scorer, catalogue), clicks, rules)
    shown = [item for item in ranked if item not in hidden and item not in rules.exclude_items]
    assert suggestion.items == shown[:TOP_K] and suggestion.source == "model"


def test_a_suggestion_whose_candidates_run_dry_is_topped_up_with_popular_shown_items(scorer: Scorer) -> None:
    clicks = scorer.item_ids[5:7]
    recommender = engine(scorer, catalogue := Catalogue())
    [*_, before] = served(engine(scorer, None), clicks)
    hidden = set(last_candidates(scorer, clicks)) | set(scorer.item_ids[:3])
    for item in hidden - {before.items[0]}:
        catalogue.apply(item, HIDDEN)
    [*_, after] = served(recommender, clicks)
    assert after.source == "model+popularity" and len(after.items) == TOP_K
    assert after.items[0] == before.items[0] and not hidden - {before.items[0]} & set(after.items)
    popular = [scorer.item_ids[i] for i in scorer.popular_order.tolist()
               if scorer.item_ids[i] not in hidden | set(clicks)]
    assert after.items[1:] == popular[: TOP_K - 1]


def test_the_best_new_candidates_below_k_take_the_shares_places(scorer: Scorer) -> None:
    clicks = scorer.item_ids[5:8]
    ranked = [item for item in last_candidates(scorer, clicks) if item not in clicks]
    catalogue = Catalogue()
    for position in (24, 29, 30):
        catalogue.apply(ranked[position], ItemRecord(available=True, new=True))
    catalogue.apply(ranked[21], ItemRecord(available=False, new=True))
    [*_, suggestion] = served(engine(scorer, catalogue, new_items_share=0.1), clicks)  # 2 places of 20
    assert suggestion.items == ranked[:18] + [ranked[24], ranked[29]] and suggestion.source == "model"
    assert suggestion.scores == sorted(suggestion.scores, reverse=True)


def test_an_unknown_click_gets_popular_items_the_catalogue_shows(scorer: Scorer) -> None:
    catalogue = Catalogue()
    popular = [scorer.item_ids[i] for i in scorer.popular_order[:TOP_K + 2].tolist()]
    catalogue.apply(popular[0], HIDDEN)
    catalogue.apply(popular[1], HIDDEN)
    [suggestion] = served(engine(scorer, catalogue), ["not-an-item"])
    assert suggestion.source == "popularity" and suggestion.items == popular[2:]


def test_a_clicks_rules_select_categories_and_leave_items_out(scorer: Scorer) -> None:
    clicks = scorer.item_ids[5:8]
    [*_, before] = served(engine(scorer, None), clicks)
    catalogue = Catalogue()
    shoes = before.items[1::2]  # every other suggested item
    for item in shoes:
        catalogue.apply(item, ItemRecord(available=True, category="shoes"))
    popular_shoes = [scorer.item_ids[i] for i in scorer.popular_order[-40:].tolist()]
    for item in popular_shoes:
        catalogue.apply(item, ItemRecord(available=True, category="shoes"))
    rules = ClickRules(categories=frozenset({"shoes", "unheard-of"}), exclude_items=frozenset({shoes[0]}))
    [*_, after] = served(engine(scorer, catalogue), clicks, rules)
    assert after.items[: len(shoes) - 1] == shoes[1:] and len(after.items) == TOP_K
    assert set(after.items) <= set(shoes[1:]) | set(popular_shoes) and after.source == "model+popularity"
    assert served(engine(scorer, catalogue), clicks, ClickRules(categories=frozenset({"none"})))[-1].items == []


def test_records_follow_the_served_models_and_wait_for_items_no_model_knows(scorer: Scorer) -> None:
    catalogue = Catalogue()
    known, unknown = scorer.item_ids[3], "launched-this-morning"
    catalogue.apply(unknown, ItemRecord(available=False, category="new-in", new=True))
    catalogue.apply(known, ItemRecord(available=True, blocked=True, category="c"))
    catalogue.apply("gone", HIDDEN)
    catalogue.apply("gone", None)
    assert catalogue.items == 2 and catalogue.record("gone") is None
    first = catalogue.view(scorer)
    second = catalogue.view(Scorer(scorer.artifact_dir))  # the same items under another model: a canary, a swap
    assert first.hidden(np.array([scorer.index_of(known)])).tolist() == [True]
    catalogue.apply(known, ItemRecord(available=True))
    assert not first.hidden(np.array([scorer.index_of(known)])).any()
    assert not second.hidden(np.array([scorer.index_of(known)])).any()
    catalogue.release(first)
    catalogue.release(second)
    assert catalogue.record(known) == ItemRecord(available=True)
    assert catalogue.record(unknown) == ItemRecord(False, False, "new-in", True) and catalogue.items == 2
    again = catalogue.view(scorer)
    assert catalogue.record(known) == ItemRecord(available=True) and not again.hidden(np.arange(10)).any()
