"""A version with more items is swapped in under load: a worker serving v1 of a local store gets v2, an
incremental update of v1 over the real test day (`training.incremental.update`: v2 knows every item clicked that
day, v1 about two thirds of them), promoted and announced while real test-day sessions flow at a fixed rate.

Every click is answered exactly once; every session started under v1 and ended under v2, and each of its
suggestions equals what the version that made it gives offline for the session's whole prefix (state carried
over, the grown item table included); clicks on items new to v1 get the popularity answer from v1 and the
model's from v2; and the worker's counters of clicks on unknown items say the same, per version.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import RecordMetadata

from devtools.artifact_versions import renamed
from devtools.click_replay import held_out_clicks, kafka_producer
from stream_app.inference.scoring import Scorer
from stream_app.release.publish import promote_and_announce
from stream_app.release.store import ArtifactStore
from stream_app.settings import Settings, get_settings

pytestmark = pytest.mark.broker

CLICKS = 3000  # about: whole real sessions of 2 to MAX_HISTORY clicks, the first of the test day, until this many
RATE = 200.0  # clicks per second, steadily, before, during and after the swap
PROMOTE_AFTER = 1000  # clicks sent (every session's first click among them) when v2 is pushed and promoted
SWAP_TIMEOUT = 20.0
MAX_HISTORY = Settings.model_fields["max_history"].default  # longer sessions: the worker replays only the last


def real_sessions() -> dict[str, list[str]]:
    """Whole test-day sessions of 2 to MAX_HISTORY clicks, in the order of their first click, about CLICKS in all."""
    sessions: dict[str, list[str]] = {}
    for click in held_out_clicks(get_settings()):
        sessions.setdefault(click.session_id, []).append(click.item_id)
    chosen: dict[str, list[str]] = {}
    for session, items in sessions.items():
        if sum(map(len, chosen.values())) >= CLICKS:
            break
        if 2 <= len(items) <= MAX_HISTORY:
            chosen[session] = items
    return chosen


def spread(sessions: dict[str, list[str]]) -> list[tuple[str, str, list[str]]]:
    """Every click as (session, item, the session's clicks up to it), each session's clicks spread over the
    whole stream: its first at the start, its last at the end, the others between (its j-th of n at j/(n-1)),
    so that every session clicks before the swap and after it."""
    placed = [
        (j / (len(items) - 1), number, j)
        for number, items in enumerate(sessions.values())
        for j in range(len(items))
    ]
    ids = list(sessions)
    return [
        (ids[number], sessions[ids[number]][j], sessions[ids[number]][: j + 1]) for _, number, j in sorted(placed)
    ]


@dataclass
class SteadyClicks:
    """Sends clicks at RATE per second from its own event loop (run in a thread); `sent` counts them as they go."""

    settings: Settings
    clicks: list[tuple[str, str, list[str]]]
    sent: int = 0
    written: list[RecordMetadata] = field(default_factory=list)

    async def send(self) -> list[RecordMetadata]:
        producer = kafka_producer(self.settings)  # keyed by session id: the partition the worker expects
        await producer.start()
        try:
            started, pending = time.monotonic(), []
            for number, (session, item, _) in enumerate(self.clicks):
                if (delay := started + number / RATE - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                value = json.dumps({"session_id": session, "item_id": item, "timestamp": time.time()}).encode()
                pending.append(await producer.send(self.settings.clicks_topic, value, key=session.encode()))
                self.sent = number + 1
            self.written = list(await asyncio.gather(*pending))
            return self.written
        finally:
            await producer.stop()


@dataclass
class Catalogue:
    worker: Any
    store: ArtifactStore
    v2: Path  # built, not pushed yet
    scorers: dict[str, Scorer]  # v1 and v2 by version, loaded offline


@pytest.fixture(scope="module")
def catalogue(
    artifact: Path,
    store_worker: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
    one_torch_thread: None,
) -> Iterator[Catalogue]:
    """A worker following a local store that serves v1 (the tiny artifact); v2, v1 updated over the whole real
    test day, is built but not pushed."""
    pytest.importorskip("torch")
    from training.data.datasets import load_dataset
    from training.incremental import UpdateBudget, update

    tmp = tmp_path_factory.mktemp("growing-catalogue")
    v1 = renamed(artifact, tmp / "v1", "v1")
    _, test_day = load_dataset("yoochoose_rsc15_100k")
    grown = update(v1, test_day, tmp / "v2", budget=UpdateBudget(epochs=1),
                   cutoff={"until": float(test_day.times.max())})
    assert grown.new_items > 0
    with store_worker(tmp, v1) as (worker, store):
        yield Catalogue(worker, store, grown.directory, {"v1": Scorer(v1), grown.version: Scorer(grown.directory)})


def test_a_version_with_more_items_is_swapped_in_under_load_with_every_session_carried_over(
    catalogue: Catalogue, offline_items_of: Callable
) -> None:
    worker, store = catalogue.worker, catalogue.store
    v1 = catalogue.scorers["v1"]
    [v2_version] = set(catalogue.scorers) - {"v1"}
    v2 = catalogue.scorers[v2_version]
    sessions = real_sessions()
    stream = SteadyClicks(worker.settings, spread(sessions))
    assert len(sessions) < PROMOTE_AFTER < len(stream.clicks) - len(sessions)

    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(asyncio.run, stream.send())
        while stream.sent < PROMOTE_AFTER and not sending.done():
            time.sleep(0.02)
        store.push(catalogue.v2)
        promote_and_announce(store, v2_version, worker.settings)
        promoted_at = stream.sent
        worker.wait_until(
            lambda: worker.metric("nextclick_model_info", artifact_version=v2_version) == 1,
            timeout=SWAP_TIMEOUT,
            what=f"serving {v2_version}",
        )
        serving_at = stream.sent
        written = sending.result()
    assert promoted_at < serving_at < len(stream.clicks), "the swap landed while the clicks flowed"

    # every click answered exactly once
    worker.wait_until(
        lambda: worker.metric("nextclick_suggestions_published_total") >= len(written),
        what=f"{len(written)} suggestions",
    )
    assert worker.metric("nextclick_suggestions_published_total") == len(written)
    answers: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for record in worker.consume(worker.settings.recommendations_topic, len(written)):
        suggestion = json.loads(record.value)
        answers[suggestion["click"]["partition"], suggestion["click"]["offset"]].append(suggestion)
    sent_at = [(w.partition, w.offset) for w in written]
    assert set(answers) == set(sent_at) and all(len(a) == 1 for a in answers.values()), "each click once"
    served = [(answers[key][0], click) for key, click in zip(sent_at, stream.clicks, strict=True)]

    # a swap falls between two batches: on each partition, v1 up to some offset, v2 from there on
    for partition in {p for p, _ in sent_at}:
        in_order = sorted((o, a[0]["artifact_version"]) for (p, o), a in answers.items() if p == partition)
        versions = [version for version, _ in itertools.groupby(v for _, v in in_order)]
        assert versions == ["v1", v2_version], (partition, versions)

    # every session began under v1 and ended under v2; each suggestion is its version's for the whole prefix
    by_session: dict[str, list[str]] = defaultdict(list)
    for suggestion, (session, _, _) in served:
        by_session[session].append(suggestion["artifact_version"])
    assert all(v[0] == "v1" and v[-1] == v2_version for v in by_session.values()), "sessions span the swap"
    references = {"v1": offline_items_of(v1), v2_version: offline_items_of(v2)}
    for suggestion, (session, item, prefix) in served:
        assert suggestion["session_id"] == session and suggestion["click"]["item_id"] == item
        assert suggestion["items"] == references[suggestion["artifact_version"]](prefix), (session, prefix)

    # clicks on items new to v1: popularity from v1, the model from v2 (which knows every item of the day)
    sources: Counter[tuple[str, bool, str]] = Counter(
        (s["artifact_version"], v1.index_of(item) is None, s["source"]) for s, (_, item, _) in served
    )
    assert sources[("v1", True, "popularity")] and sources[(v2_version, True, "model")]
    assert set(sources) <= {("v1", True, "popularity"), ("v1", False, "model"),
                            (v2_version, True, "model"), (v2_version, False, "model")}, sources

    # the worker's counters, per version: clicks scored, and those on items the version does not know
    for version, scorer in (("v1", v1), (v2_version, v2)):
        labels = {"model": "gru4rec", "artifact_version": version, "variant": "current"}
        mine = [item for s, (_, item, _) in served if s["artifact_version"] == version]
        assert worker.metric("nextclick_clicks_scored_total", **labels) == len(mine)
        unknown = sum(scorer.index_of(item) is None for item in mine)
        assert worker.metric("nextclick_clicks_unknown_item_total", **labels) == unknown
        assert (unknown > 0) is (version == "v1")
