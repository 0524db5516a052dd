"""The per-session batching logic (`SessionRecommender`) on a real (tiny) artifact and a plain dict, without a
broker: rounds, state carried between batches, unknown items, TTL, history cap, replays after a model change,
repeated deliveries."""

from __future__ import annotations

import dataclasses
import itertools
import json
import zlib

import numpy as np
import pytest

from stream_app.inference.events import Click
from stream_app.inference.scoring import Scorer
from stream_app.inference.sessions import SessionRecommender, SessionState
from stream_app.inference.suggestion import SourcedClick

TOP_K = 20


def recommender(scorer: Scorer, **overrides: object) -> SessionRecommender:
    options = {"top_k": TOP_K, "max_history": 50, "session_ttl": 1800.0, "exclude_seen": True} | overrides
    return SessionRecommender(scorer, **options)  # type: ignore[arg-type]


_next_offset = itertools.count()


def sourced(session_id: str, item_id: str, offset: int | None = None) -> SourcedClick:
    """A click read at `offset`, by default after every click made so far (a new click, not a repeat)."""
    offset = next(_next_offset) if offset is None else offset
    return SourcedClick(Click(session_id, item_id, 1396321357.5), partition=0, offset=offset)


def serve(
    engine: SessionRecommender, clicks: list[SourcedClick], table: dict[bytes, SessionState], now: float
) -> list[dict]:
    """What the worker does with a batch: recommend, then write the states back."""
    result = engine.recommend(clicks, table, now)
    table.update(result.states)
    return result.suggestions


def expected_for_prefix(scorer: Scorer, items: list[str], k: int = TOP_K) -> list[str]:
    """The suggestion after `items`, computed click by click with `Scorer.step` (all known items)."""
    hidden = scorer.zero_hidden(1)
    for item in items:
        result = scorer.step(np.array([scorer.index_of(item)]), hidden)
        hidden = result.next_hidden
    seen = {scorer.index_of(item) for item in items}
    chosen, _ = scorer.select(result.top_items[0], result.top_scores[0], k, seen)
    return [scorer.item_ids[i] for i in chosen]


def test_clicks_of_one_session_in_one_batch_are_stepped_in_order(scorer: Scorer) -> None:
    a, b, c = scorer.item_ids[:3]
    table: dict[bytes, SessionState] = {}
    batch = [sourced("s1", a, 0), sourced("s2", c, 1), sourced("s1", b, 2), sourced("s1", c, 3)]
    suggestions = serve(recommender(scorer), batch, table, now=1000.0)
    assert [s.items for s in suggestions] == [
        expected_for_prefix(scorer, [a]),
        expected_for_prefix(scorer, [c]),
        expected_for_prefix(scorer, [a, b]),
        expected_for_prefix(scorer, [a, b, c]),
    ]
    assert [s.answers.offset for s in suggestions] == [0, 1, 2, 3]
    assert table[b"s1"].items == [a, b, c] and table[b"s1"].artifact_version == scorer.version


def test_state_carries_over_between_batches(scorer: Scorer) -> None:
    a, b = scorer.item_ids[5:7]
    table: dict[bytes, SessionState] = {}
    engine = recommender(scorer)
    serve(engine, [sourced("s1", a)], table, now=1000.0)
    [suggestion] = serve(engine, [sourced("s1", b)], table, now=1001.0)
    assert suggestion.items == expected_for_prefix(scorer, [a, b])
    assert suggestion.source == "model" and len(suggestion.scores) == TOP_K


def test_an_unknown_item_gets_popular_items_and_keeps_the_state(scorer: Scorer) -> None:
    a, b = scorer.item_ids[:2]
    table: dict[bytes, SessionState] = {}
    engine = recommender(scorer)
    [first, unknown] = serve(engine, [sourced("s1", a), sourced("s1", "no-such-item")], table, now=1000.0)
    assert unknown.source == "popularity"
    popular, _ = scorer.popular(TOP_K, {scorer.index_of(a)})
    assert unknown.items == [scorer.item_ids[i] for i in popular]
    [after] = serve(engine, [sourced("s1", b)], table, now=1001.0)
    assert after.items == expected_for_prefix(scorer, [a, b])


def test_an_idle_session_starts_over(scorer: Scorer) -> None:
    a, b = scorer.item_ids[:2]
    table: dict[bytes, SessionState] = {}
    engine = recommender(scorer, session_ttl=60.0)
    serve(engine, [sourced("s1", a)], table, now=1000.0)
    [suggestion] = serve(engine, [sourced("s1", b)], table, now=1061.0)
    assert suggestion.items == expected_for_prefix(scorer, [b])
    assert table[b"s1"].items == [b]


def test_state_from_another_artifact_is_rebuilt_by_replaying_the_items(scorer: Scorer) -> None:
    a, b, c = scorer.item_ids[:3]
    stale = SessionState(items=[a, "gone-item", b], last_seen=1000.0, hidden=bytes(3), artifact_version="older")
    table = {b"s1": stale}
    [suggestion] = serve(recommender(scorer), [sourced("s1", c)], table, now=1001.0)
    assert suggestion.items == expected_for_prefix(scorer, [a, b, c])


def test_stale_sessions_of_one_batch_are_replayed_together_each_as_on_its_own(scorer: Scorer) -> None:
    """After a swap every session of a batch may need a replay; they share model calls, not results."""
    histories = {f"s{n}": scorer.item_ids[n : n + length] for n, length in enumerate([1, 4, 2, 7, 3])}
    table = {
        session.encode(): SessionState(items=items, last_seen=1000.0, hidden=b"", artifact_version="older")
        for session, items in histories.items()
    }
    clicked = scorer.item_ids[40]
    suggestions = serve(recommender(scorer), [sourced(s, clicked) for s in histories], table, now=1001.0)
    for suggestion, (session, items) in zip(suggestions, histories.items(), strict=True):
        assert suggestion.items == expected_for_prefix(scorer, [*items, clicked]), session
        assert table[session.encode()].artifact_version == scorer.version


def test_history_is_capped(scorer: Scorer) -> None:
    table: dict[bytes, SessionState] = {}
    items = scorer.item_ids[:6]
    serve(recommender(scorer, max_history=4), [sourced("s1", item) for item in items], table, now=1000.0)
    assert table[b"s1"].items == items[-4:]


@pytest.mark.parametrize("committed", [None, 11], ids=["all offsets kept", "offset 10 committed"])
def test_a_repeated_click_gets_its_first_answer_and_leaves_the_state_alone(
    scorer: Scorer, committed: int | None
) -> None:
    """After a crash the changelog may already hold clicks that Kafka delivers again: those from the
    committed offset on, the only offsets the worker keeps (`forget_committed`)."""
    a, b, c, d = scorer.item_ids[:4]
    table: dict[bytes, SessionState] = {}
    engine = recommender(scorer)
    first = serve(
        engine, [sourced("s1", a, 10), sourced("s1", b, 11), sourced("s1", c, 12)], table, now=1000.0
    )
    table[b"s1"].forget_committed(committed)
    assert table[b"s1"].offsets == [10, 11, 12][(committed or 10) - 10 :]
    again = serve(
        engine, [sourced("s1", b, 11), sourced("s1", c, 12), sourced("s1", d, 13)], table, now=1001.0
    )
    assert [s.items for s in again[:2]] == [s.items for s in first[1:]]
    assert again[2].items == expected_for_prefix(scorer, [a, b, c, d])
    assert table[b"s1"].items == [a, b, c, d] and table[b"s1"].offsets == [10, 11, 12, 13][(committed or 10) - 10 :]


def test_a_state_record_is_a_json_line_then_the_suggestion_hashes_and_the_exact_float32_hidden_state(
    scorer: Scorer,
) -> None:
    table: dict[bytes, SessionState] = {}
    [*_, last] = serve(recommender(scorer), [sourced("s1", item) for item in scorer.item_ids[:3]], table, now=1000.0)
    record = table[b"s1"].dumps()
    header, _, tail = record.partition(b"\n")
    line = json.loads(header)
    assert line["items"] == scorer.item_ids[:3] and line["by"] == ["gru4rec", scorer.version, "current"]
    hashes, hidden = tail[: 2 * line["suggested"]], tail[2 * line["suggested"] :]
    assert np.frombuffer(hashes, "<u2").tolist() == [zlib.crc32(item.encode()) & 0xFFFF for item in last.items]
    assert len(hidden) == 4 * scorer.layers * scorer.hidden_size and SessionState.loads(record) == table[b"s1"]
    assert SessionState.last_seen_of(record) == 1000.0 and line["last_seen"] == 1000


def test_a_batch_of_only_repeated_clicks_writes_no_state(scorer: Scorer) -> None:
    """A repeat leaves its session's state as it was: nothing to write to the changelog."""
    table: dict[bytes, SessionState] = {}
    engine = recommender(scorer)
    serve(engine, [sourced("s1", scorer.item_ids[0], 10), sourced("s2", scorer.item_ids[1], 11)], table, now=1000.0)
    again = [sourced("s1", scorer.item_ids[0], 10), sourced("s2", scorer.item_ids[2], 12)]
    result = engine.recommend(again, table, now=1001.0)
    assert list(result.states) == [b"s2"]


@pytest.mark.parametrize(
    "state",
    [
        SessionState(items=["81766"], last_seen=1733331234.9, hidden=b"", artifact_version="v1", offsets=[7],
                     model="narm", variant="canary"),
        SessionState(items=["a\nb", "é", "31331"], last_seen=5.0, hidden=np.arange(6, dtype="<f4").tobytes(),
                     artifact_version="v2", offsets=[], suggested=[0, 0x0A0A, 0xFFFF], model="gru4rec",
                     variant="current"),
    ],
    ids=["no hidden state, no suggestion", "newlines in an id and in the binary tail"],
)
def test_a_state_record_round_trips_with_last_seen_in_whole_seconds(state: SessionState) -> None:
    record = state.dumps()
    assert record.startswith(b'{"last_seen":')
    back = SessionState.loads(record)
    assert back == dataclasses.replace(state, last_seen=float(int(state.last_seen)))
    assert SessionState.last_seen_of(record) == int(state.last_seen)
