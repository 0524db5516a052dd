"""The catalogue topic end to end, on the embedded broker and real workers serving a real artifact: a record stops
every worker suggesting an item (a worker that starts later reads it before it serves), clicks' rules hold, bad
records are dead-lettered while the worker serves on, and availability flips under load stay within the bound.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.catalogue_flips import catalogue_record, flips_under_load
from devtools.click_replay import LoggedClick
from devtools.embedded_broker import EmbeddedBroker, free_port
from stream_app.inference.partitioning import partition_for_key
from stream_app.inference.scoring import Scorer
from stream_app.worker.dead_letters import HEADER_PREFIX
from tests.stream_app.worker.test_serving import click_message, real_sessions

pytestmark = pytest.mark.broker

TOP_K = 20  # test workers serve the default
# A record sent at t is applied in every worker by t + 1 s (the bar of BENCHMARKS.md's propagation row), and a batch
# scored just before it lands is published up to one batch later: the flip test allows 1 s + 0.5 s.
PROPAGATION_BOUND = 1.5


@pytest.fixture(scope="module")
def worker(artifact: Path, start_worker: Callable[..., Any]) -> Iterator[Any]:
    with start_worker("catalogue-worker", require_model=True, serving_artifact_dir=artifact) as running:
        yield running


def ruled_click(session_id: str, item_id: str, rules: object) -> tuple[bytes, bytes]:
    value = {"session_id": session_id, "item_id": item_id, "timestamp": 1.0, "rules": rules}
    return session_id.encode(), json.dumps(value).encode()


def suggestions_of(worker: Any, sessions: set[str], timeout: float = 20.0) -> dict[str, dict]:
    """The latest suggestion of each of `sessions` on the recommendations topic, waiting until each has one."""
    found: dict[str, dict] = {}
    worker.wait_until(lambda: found.update(
        {(s := json.loads(r.value))["session_id"]: s for r in worker.consume(worker.settings.recommendations_topic,
                                                                          10**6, timeout=1.0)
         if json.loads(r.value)["session_id"] in sessions}) or found.keys() >= sessions, timeout, "suggestions")
    return found


def test_clicks_rules_select_categories_and_leave_items_out(
    worker: Any, scorer: Scorer, offline_items: Callable[[list[str]], list[str]]
) -> None:
    clicked = scorer.item_ids[5]
    plain = offline_items([clicked])
    shoes = plain[1::2] + [scorer.item_ids[i] for i in scorer.popular_order[-40:].tolist()]
    records = [(item.encode(), catalogue_record(True, category="shoes", colour="red")) for item in shoes]
    worker.produce(worker.settings.catalogue_topic, records)
    worker.wait_until(lambda: worker.metric("nextclick_catalogue_items") == len(shoes), what="the records applied")
    rules = {"categories": ["shoes", "hats"], "exclude_items": [int(shoes[0])]}
    worker.produce(worker.settings.clicks_topic, [
        click_message("rules-plain", clicked),
        ruled_click("rules-1", clicked, rules),
        ruled_click("rules-bad", clicked, {"categories": "shoes"}),
    ])
    found = suggestions_of(worker, {"rules-plain", "rules-1"})
    assert found["rules-plain"]["items"] == plain and found["rules-plain"]["source"] == "model"  # unchanged
    ruled = found["rules-1"]
    assert ruled["items"][: len(plain[1::2]) - 1] == plain[3::2]  # the model's own, in its order, first
    assert set(ruled["items"]) <= set(shoes[1:]) and len(ruled["items"]) == TOP_K
    assert ruled["source"] == "model+popularity"
    worker.wait_until(lambda: worker.metric("nextclick_dead_letters_total", reason="bad_value") == 1, what="dlq")
    assert worker.metric("nextclick_suggestions_topped_up_total", model="gru4rec") >= 1


def test_bad_catalogue_records_are_dead_lettered_and_the_worker_serves_on(worker: Any, scorer: Scorer) -> None:
    topic = worker.settings.catalogue_topic
    bad = [
        ("bad_json", b"1", b'{"available": fals'),
        ("wrong_type", b"2", b'{"available": "no"}'),
        ("missing_field", b"3", b'{"category": "shoes"}'),
        ("oversize", b"4", catalogue_record(True, note="x" * worker.settings.catalogue_max_record_bytes)),
        ("bad_value", None, catalogue_record(False)),
    ]
    sent = {(m.partition, m.offset): reason for (reason, *_), m in zip(
        bad, [worker.produce(topic, [(key, value)])[0] for _, key, value in bad], strict=True)}
    letters = {}
    worker.wait_until(lambda: letters.update({
        (int(h["partition"]), int(h["offset"])): h["reason"]
        for r in worker.consume(worker.settings.dead_letter_topic, 10**6, timeout=1.0)
        if (h := {k.removeprefix(HEADER_PREFIX): v.decode() for k, v in r.headers})["topic"] == topic
    }) or letters.keys() >= sent.keys(), what="the catalogue dead letters")
    assert {source: letters[source] for source in sent} == sent
    for reason, *_ in bad:
        assert worker.metric("nextclick_catalogue_dead_letters_total", reason=reason) == 1
    assert worker.metric("nextclick_dead_letters_total", reason="bad_json") == 0  # clicks' counter: untouched
    worker.produce(worker.settings.clicks_topic, [click_message("after-bad", scorer.item_ids[1])])
    assert len(suggestions_of(worker, {"after-bad"})["after-bad"]["items"]) == TOP_K


def test_a_record_reaches_every_worker_and_a_worker_that_starts_later_reads_it_before_serving(
    broker: EmbeddedBroker, artifact: Path, scorer: Scorer, launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]], tmp_path: Path, offline_items: Callable[[list[str]], list[str]],
) -> None:
    clicked = scorer.item_ids[7]
    first_choice, second_choice = offline_items([clicked])[:2]
    fields = worker_fields(broker.bootstrap_servers, tmp_path, serving_artifact_dir=artifact)
    with launch_worker(fields, tmp_path / "first.log", require_model=True) as first:
        first.produce(first.settings.catalogue_topic, [(first_choice.encode(), catalogue_record(False))])
        first.wait_until(lambda: first.metric("nextclick_catalogue_items") == 1, what="the first record")
        with launch_worker(fields | {"web_port": free_port()}, tmp_path / "second.log", require_model=True) as second:
            assert second.metric("nextclick_catalogue_items") == 1  # read before it became ready
            blocked = catalogue_record(True, blocked=True)
            first.produce(first.settings.catalogue_topic, [(second_choice.encode(), blocked)])
            for running in (first, second):
                running.wait_until(lambda r=running: r.metric("nextclick_catalogue_items") == 2, what="the second")
                assert 0 < running.metric("nextclick_catalogue_propagation_seconds_count")
            sessions = {f"both-{n}" for n in range(8)}
            assert {partition_for_key(s.encode(), 2) for s in sessions} == {0, 1}
            first.produce(first.settings.clicks_topic, [click_message(session, clicked) for session in sessions])
            found = suggestions_of(first, sessions)
            published = [running.metric("nextclick_suggestions_published_total") for running in (first, second)]
    assert all(count > 0 for count in published)  # each worker served its partition
    for suggestion in found.values():
        assert len(suggestion["items"]) == TOP_K and not {first_choice, second_choice} & set(suggestion["items"])


def test_no_suggestion_holds_an_item_unavailable_longer_than_the_bound_while_a_tenth_flips_every_second(
    artifact: Path, scorer: Scorer, start_worker: Callable[..., Any]
) -> None:
    """10% of the artifact's items flip availability every second for 20 s under 500 clicks/s of real sessions
    (bench/catalogue.py runs the same for 100,000 suggestions)."""
    clicks = [LoggedClick(f"flip-{session}", item, 0.0) for session, item in real_sessions(10_000)]
    with start_worker("flip-worker", require_model=True, serving_artifact_dir=artifact) as worker:
        log, verdict, sent = asyncio.run(flips_under_load(worker.settings, clicks, 500.0, 0.1, scorer.item_ids))
    assert sent == len(clicks) and len(verdict.answered) == sent  # every click answered
    assert verdict.short == 0 and log.records >= 19 * len(scorer.item_ids) // 10
    assert max(verdict.lateness, default=0.0) <= PROPAGATION_BOUND, sorted(verdict.lateness)[-5:]
