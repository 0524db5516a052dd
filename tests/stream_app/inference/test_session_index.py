"""The live session index: built click by click it scores as the offline V-SKNN baseline does on the same
sessions; a session seen a moment ago is a neighbour of the next; new items are suggested once clicked; the
oldest sessions go when it is full, and its memory stays within the bound."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.inference.session_index import COMPACT_AT, SessionIndex
from stream_app.inference.session_knn import VSKNN, VSKNNParams
from tests.real_slices import yoochoose_slice
from training.data.click_log import EncodedSplit, Sessions
from training.evaluation.baselines import baseline_ranks, ranks_of


def clicks_interleaved(sessions: Sessions, first: int = 0) -> list[tuple[int, int]]:
    """(session, item) of every click, sessions overlapping in time as a live stream's do: session s starts at
    time s and clicks every 3 time units, so its clicks come between later sessions' (start order is kept)."""
    clicks = []
    for s in range(first, sessions.n_sessions):
        for t, item in enumerate(sessions.items[sessions.offsets[s]:sessions.offsets[s + 1]].tolist()):
            clicks.append((s + 3 * t, s, item))
    return [(s, item) for _, s, item in sorted(clicks)]


def live_index(sessions: Sessions, capacity: int | None = None, first: int = 0) -> SessionIndex:
    index = SessionIndex(capacity or sessions.n_sessions)
    for s, item in clicks_interleaved(sessions, first):
        index.add(f"session-{s}", item)
    return index


@pytest.mark.parametrize("params", [VSKNNParams(), VSKNNParams(k=20, sample_size=50, idf_weighting=0.5),
                                    VSKNNParams(k=5, sample_size=0, idf_weighting=1.0)])
def test_live_index_ranks_equal_the_offline_baseline(params):
    train, test, item_map, popularity = yoochoose_slice()
    offline = baseline_ranks("vsknn", params, EncodedSplit(train, test, item_map, popularity))
    live = ranks_of(VSKNN(live_index(train), params), test)
    assert live.tolist() == offline.tolist()


def test_a_session_seen_a_moment_ago_is_a_neighbour_of_the_next():
    index = SessionIndex(100)
    model = VSKNN(index, VSKNNParams())
    assert len(model.sparse_scores(np.array([3]))[0]) == 0  # nobody clicked 3 yet
    for item in (3, 7, 9):
        index.add("earlier", item)
    items, scores = model.sparse_scores(np.array([3]))
    assert items.tolist() == [3, 7, 9] and scores.tolist() == [1.0, 1.0, 1.0]
    current = index.add("current", 3)  # the session being served is in the index too: not its own neighbour
    assert model.sparse_scores(np.array([3]), exclude=current)[0].tolist() == [3, 7, 9]


def test_an_item_never_trained_on_is_suggested_once_sessions_click_it():
    train, _, item_map, _ = yoochoose_slice()
    index = live_index(train)
    model = VSKNN(index, VSKNNParams())
    new_item = len(item_map)  # the next number: an item the training sessions never clicked
    known = int(train.items[0])
    assert new_item not in model.sparse_scores(np.array([known]))[0]
    for s in range(3):
        index.add(f"launch-{s}", known)
        index.add(f"launch-{s}", new_item)
    items, scores = model.sparse_scores(np.array([known]))
    assert new_item in items
    ranked = items[np.argsort(-scores, kind="stable")]
    assert new_item in ranked[:20]  # three sessions that clicked it, the most recent of all: among the best


def test_a_full_index_keeps_the_latest_sessions_within_its_memory_bound():
    train, test, item_map, _ = yoochoose_slice()
    capacity = 200
    index = live_index(train, capacity)
    assert index.n_sessions == capacity and len(index.number_of) == capacity
    assert set(index.number_of) == {f"session-{s}" for s in range(train.n_sessions - capacity, train.n_sessions)}
    live_entries = sum(index.support_of(np.arange(index.n_items)))
    stored = sum(len(holders) for holders in index._holders)
    assert stored <= 2 * live_entries + COMPACT_AT * index.n_items
    latest = live_index(train, first=train.n_sessions - capacity)  # only the last `capacity` sessions
    for s in range(test.n_sessions):
        prefix = test.items[test.offsets[s]:test.offsets[s + 1]]
        for mine, theirs in zip(VSKNN(index, VSKNNParams()).sparse_scores(prefix),
                                VSKNN(latest, VSKNNParams()).sparse_scores(prefix), strict=True):
            np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("params", [VSKNNParams(), VSKNNParams(k=5, sample_size=20, idf_weighting=0.5)])
def test_a_batch_scores_each_prefix_as_it_would_alone(params):
    train, test, _, _ = yoochoose_slice()
    index = live_index(train)
    model = VSKNN(index, params)
    prefixes = [test.items[test.offsets[s]:test.offsets[s] + t] for s in range(test.n_sessions)
                for t in range(1, test.offsets[s + 1] - test.offsets[s] + 1)][:300]
    excludes = np.arange(len(prefixes)) % 7 * 13 - 1  # some rows with none (-1), others a neighbour left out
    rows, items, scores = model.batch_scores(prefixes, excludes)
    for row, (prefix, exclude) in enumerate(zip(prefixes, excludes.tolist(), strict=True)):
        alone = model.sparse_scores(prefix, None if exclude < 0 else exclude)
        np.testing.assert_array_equal(items[rows == row], alone[0])
        np.testing.assert_array_equal(scores[rows == row], alone[1])


def test_a_click_indexed_with_its_offset_is_known_as_indexed_until_its_session_goes():
    index = SessionIndex(2)
    index.add("a", 3, offset=10)
    index.add("a", 4, offset=12)
    assert index.indexed("a", 10) and index.indexed("a", 12) and not index.indexed("a", 13)
    assert not index.indexed("b", 0)  # a session the index has not seen
    index.add("b", 3, offset=0)
    index.add("c", 3, offset=1)  # full: "a" goes
    assert not index.indexed("a", 10) and index.indexed("b", 0) and index.indexed("c", 1)
