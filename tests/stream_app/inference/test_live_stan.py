"""The `stan` pipeline: an index built click by click from a real log, in time order, scores every test prefix as
the offline STAN baseline does on the same sessions (to the last digit); a click indexed twice changes nothing; a
full index forgets the oldest sessions' positions and times; served, a session of a moment ago is a neighbour of
the next, its items ranked by their distance in it from the shared click, a recent neighbour above an old one."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from stream_app.inference.live_knn import STAN_PIPELINE, LiveNeighbours
from stream_app.inference.session_index import PAIR, SessionIndex
from stream_app.inference.stan import STAN, STANParams
from tests.real_slices import yoochoose_slice
from tests.stream_app.inference.test_live_knn import served, suggest
from training.data.datasets import load_dataset
from training.evaluation.baselines import TrainIndex, ranks_of, session_end_times

PARAMS = [STANParams(), STANParams(k=20, sample_size=50, lambda_time=3_600.0, zero_shared_item=True),
          STANParams(k=5, sample_size=0, lambda_position=3.0, lambda_item=0.5)]


@lru_cache(maxsize=2)
def train_clicks(in_time_order: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(session, item, time) of every click of `yoochoose_slice`'s training sessions: in time order (a session's
    clicks and sessions' first clicks keep their log order where times tie), as a clicks topic holds them, or
    session after session."""
    train, *_ = yoochoose_slice()
    times = load_dataset("yoochoose_rsc15_100k")[0].head_sessions(train.n_sessions).times
    assert len(times) == train.n_clicks  # the item map is fitted on these sessions: no click was dropped
    session = np.repeat(np.arange(train.n_sessions), train.lengths())
    order = np.argsort(times, kind="stable") if in_time_order else np.arange(train.n_clicks)
    return session[order], train.items[order], times[order]


def live_index(capacity: int | None = None, first: int = 0, in_time_order: bool = True) -> SessionIndex:
    """The training sessions from `first` on, indexed click by click (offsets: the click's place in the log)."""
    train, *_ = yoochoose_slice()
    index = SessionIndex(capacity or train.n_sessions)
    clicks = zip(*(column.tolist() for column in train_clicks(in_time_order)), strict=True)
    for offset, (s, item, time) in enumerate(clicks):
        if s >= first:
            index.add(f"session-{s}", item, time, offset)
    return index


def prefixes_of_test() -> list[np.ndarray]:
    _, test, _, _ = yoochoose_slice()
    return [test.items[test.offsets[s]:test.offsets[s] + t] for s in range(test.n_sessions)
            for t in range(1, test.offsets[s + 1] - test.offsets[s])]


def assert_same_scores(mine: STAN, theirs: STAN, prefixes: list[np.ndarray]) -> None:
    for a, b in zip(mine.batch_scores(prefixes), theirs.batch_scores(prefixes), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("params", PARAMS)
def test_live_index_scores_equal_the_offline_baseline(params):
    train, test, item_map, _ = yoochoose_slice()
    times = session_end_times(load_dataset("yoochoose_rsc15_100k")[0].head_sessions(train.n_sessions))
    offline = STAN(TrainIndex.of(train, len(item_map), times), params)
    index = live_index()
    assert index.number_of == {f"session-{s}": s for s in range(train.n_sessions)}  # numbered in start order
    live = STAN(index, params)
    assert_same_scores(live, offline, prefixes_of_test())
    assert ranks_of(live, test).tolist() == ranks_of(offline, test).tolist()


def test_a_click_indexed_again_changes_nothing():
    """The worker indexes its own clicks as it serves them, then its clicks reader the same ones; a restarted
    reader reads its window again. Counted twice, a click would move its session's positions."""
    train, *_ = yoochoose_slice()
    index = SessionIndex(train.n_sessions)
    clicks = list(enumerate(zip(*(column.tolist() for column in train_clicks()), strict=True)))
    once = STAN(live_index(), STANParams())
    for offset, (s, item, time) in clicks:
        for _ in ("worker", "reader"):
            index.add(f"session-{s}", item, time, offset)
    assert_same_scores(STAN(index, STANParams()), once, prefixes_of_test())
    for offset, (s, item, time) in clicks[len(clicks) // 2:]:  # the reader, restarted: its window again
        index.add(f"session-{s}", item, time, offset)
    assert_same_scores(STAN(index, STANParams()), once, prefixes_of_test())


def test_a_full_index_forgets_the_oldest_sessions_positions_and_times():
    """Session after session: in time order, a session still clicking when `capacity` later ones have started
    would be forgotten and start again, as in a worker's index."""
    train, *_ = yoochoose_slice()
    capacity = 200
    index = live_index(capacity, in_time_order=False)
    latest = live_index(first=train.n_sessions - capacity, in_time_order=False)
    live = np.arange(train.n_sessions - capacity, train.n_sessions)
    assert [index.number_of[f"session-{s}"] for s in live.tolist()] == live.tolist()
    assert sum(map(len, index._items)) == PAIR.size * index.sizes(live).sum()  # forgotten slots hold nothing
    np.testing.assert_array_equal(index.times_of(live), latest.times_of(live - live[0]))
    index.latest_time = latest.latest_time  # t_s: the latest click of the sessions kept, not of any forgotten
    assert_same_scores(STAN(index, STANParams()), STAN(latest, STANParams()), prefixes_of_test())


def test_a_session_is_not_its_own_neighbour():
    index = SessionIndex(100)
    model = STAN(index, STANParams())
    for item in (3, 7, 9):
        index.add("earlier", item, 1_000.0)
    for item in (3, 4):
        current = index.add("current", item, 1_060.0)
    assert model.sparse_scores(np.array([3, 4]))[0].tolist() == [3, 4, 7, 9]
    assert model.sparse_scores(np.array([3, 4]), exclude=current)[0].tolist() == [3, 7, 9]


def test_a_session_of_a_moment_ago_is_a_neighbour_and_its_items_rank_by_distance_and_recency():
    now = 1.7e9
    neighbours = LiveNeighbours(1000, STANParams())
    recommender = served(neighbours)
    assert recommender.scorer.name == STAN_PIPELINE
    for item in ("a7", "new-1", "a20"):  # V-SKNN ties these; STAN ranks them by distance from a7 in the session
        neighbours.observe("earlier", item, now - 60)
    suggestion = suggest(recommender, neighbours, "s1", ["a7"])
    assert suggestion.items[:2] == ["new-1", "a20"] and suggestion.source == "model"
    assert suggestion.items[2:] == ["a0", "a1", "a2"]  # then the popular ones
    for item in ("a9", "old"):  # a day older than `recent`, the same shape: it ranks below
        neighbours.observe("older", item, now - 86_400)
    for item in ("a9", "recent"):
        neighbours.observe("recent", item, now)
    assert suggest(recommender, neighbours, "s2", ["a9"]).items[:2] == ["recent", "old"]
