"""The follower on the real broker: clicks in, an incremental version gated, pushed and promoted, a worker
serving it (items new to the previous version answered by the model), resumption without training a click
twice, refusals kept in the store, bad clicks skipped and counted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from devtools.artifact_versions import renamed
from devtools.click_replay import held_out_clicks
from stream_app.inference.artifact_format import ITEM_IDS
from stream_app.release.store import ArtifactStore
from stream_app.settings import Settings, get_settings
from training.data.stream_source import TopicClick
from training.follow import Follower, FollowerMetrics, Window

pytestmark = pytest.mark.training

ROUND_CLICKS = 1500  # clicks per update (the test day in time order)


@dataclass
class Stream:
    settings: Settings
    store: ArtifactStore
    worker: Any
    day: list  # the real test day's clicks, in time order
    sent: int = 0

    def send(self, count: int, extra: list[tuple[bytes, bytes]] = ()) -> None:
        clicks = self.day[self.sent:self.sent + count]
        messages = [(c.session_id.encode(), json.dumps({"session_id": c.session_id, "item_id": c.item_id,
                                                        "timestamp": c.time}).encode()) for c in clicks]
        self.worker.produce(self.settings.clicks_topic, [*messages, *extra])
        self.sent += count

    def follower(self, registry: CollectorRegistry, **changes: Any) -> Follower:
        return Follower(self.settings.model_copy(update=changes), FollowerMetrics(registry))

    def manifest(self, version: str) -> dict:
        return json.loads((self.store.local_copy(version) / "manifest.json").read_text())


@pytest.fixture(scope="module")
def stream(artifact: Path, store_worker, tmp_path_factory) -> Iterator[Stream]:
    """v1 (the tiny artifact, trained on days before the test day) current in a store that a worker follows."""
    tmp = tmp_path_factory.mktemp("follow")
    with store_worker(tmp, renamed(artifact, tmp / "v1", "v1")) as (worker, store):
        settings = worker.settings.model_copy(update={
            "artifact_cache_dir": tmp / "follower-cache", "follow_interval_clicks": ROUND_CLICKS,
            "follow_poll_seconds": 0.5, "follow_metrics_port": 0,
            "quality_gate_tolerance": 1.0})  # always passes here: the refusal is a test of its own
        yield Stream(settings, store, worker, held_out_clicks(get_settings()))


def test_new_clicks_make_a_version_that_serves_items_new_to_the_last_one(stream: Stream) -> None:
    stream.send(ROUND_CLICKS, extra=[(b"x", b"not json"), (b"y", b'{"session_id": "y"}')])
    registry = CollectorRegistry()
    [outcome] = asyncio.run(stream.follower(registry).run(rounds=1))
    assert outcome.promoted and stream.store.current().version == outcome.version
    assert outcome.trained_clicks + outcome.held_out_clicks == ROUND_CLICKS and outcome.new_items > 0
    assert registry.get_sample_value("nextclick_follow_versions_total", {"outcome": "promoted"}) == 1
    for reason in ("bad_json", "missing_field"):  # skipped and counted as the worker dead-letters them
        assert registry.get_sample_value("nextclick_follow_skipped_clicks_total", {"reason": reason}) == 1
    lineage = stream.manifest(outcome.version)["lineage"]
    assert lineage["kind"] == "incremental" and lineage["parent"] == "v1"

    # the worker swaps to it; a click on an item v1 never knew is answered by the model
    stream.worker.wait_until(
        lambda: stream.worker.metric("nextclick_model_info", artifact_version=outcome.version) == 1,
        timeout=30.0, what=f"serving {outcome.version}")
    known_before = json.loads((stream.store.local_copy("v1") / ITEM_IDS).read_text())
    known_now = json.loads((stream.store.local_copy(outcome.version) / ITEM_IDS).read_text())
    assert known_now[:len(known_before)] == known_before  # the item map only grows
    fresh = known_now[len(known_before)]
    session = f"new-{uuid.uuid4().hex[:6]}"
    stream.worker.produce(stream.settings.clicks_topic, [(session.encode(), json.dumps(
        {"session_id": session, "item_id": fresh, "timestamp": time.time()}).encode())])
    answers = [json.loads(r.value) for r in stream.worker.consume(stream.settings.recommendations_topic,
                                                                  stream.sent + 1)]
    [answer] = [a for a in answers if a["session_id"] == session]
    assert answer["artifact_version"] == outcome.version and answer["source"] == "model"


def test_a_restarted_follower_continues_where_the_lineage_ends(stream: Stream) -> None:
    previous = stream.store.current().version
    stream.send(ROUND_CLICKS)
    [outcome] = asyncio.run(stream.follower(CollectorRegistry()).run(rounds=1))  # a new process, in effect
    before, after = stream.manifest(previous)["lineage"]["clicks"], stream.manifest(outcome.version)["lineage"]
    assert after["parent"] == previous
    # the windows trained are contiguous: the new one starts where its parent's ended, so none is trained twice
    assert after["clicks"]["from"] == before["offsets"]
    assert all(int(after["clicks"]["offsets"][p]) >= int(before["offsets"][p]) for p in before["offsets"])
    span = sum(int(after["clicks"]["offsets"][p]) - int(before["offsets"][p]) for p in before["offsets"])
    assert 0 <= span - outcome.trained_clicks <= 2  # messages, not clicks: the first test's two malformed ones


def test_a_refused_version_is_kept_and_the_current_one_keeps_serving(stream: Stream) -> None:
    current = stream.store.current().version
    stream.send(ROUND_CLICKS)
    registry = CollectorRegistry()
    [outcome] = asyncio.run(stream.follower(registry, quality_gate_tolerance=-1.0).run(rounds=1))
    assert not outcome.promoted and stream.store.current().version == current
    assert outcome.version in stream.store.versions()
    assert stream.manifest(outcome.version)["quality_gate"]["passed"] is False
    assert registry.get_sample_value("nextclick_follow_versions_total", {"outcome": "refused"}) == 1


def test_the_follower_rides_out_a_frozen_broker(stream: Stream, broker) -> None:
    """The broker stops answering for a while (SIGSTOP): the follower waits, then trains the clicks that came."""
    previous = stream.store.current().version

    async def freeze_then_send() -> list:
        # due only with the clicks sent after the freeze (the refused round's clicks are still new to the lineage)
        follower = stream.follower(CollectorRegistry(), follow_interval_clicks=2 * ROUND_CLICKS)
        following = asyncio.create_task(follower.run(rounds=1))
        await asyncio.sleep(2.0)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(8.0)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        await asyncio.to_thread(stream.send, ROUND_CLICKS)
        return await asyncio.wait_for(following, timeout=180.0)

    [outcome] = asyncio.run(freeze_then_send())
    lineage = stream.manifest(outcome.version)["lineage"]
    assert lineage["parent"] == previous
    assert lineage["clicks"]["from"] == stream.manifest(previous)["lineage"]["clicks"]["offsets"]


def test_a_damaged_current_version_is_waited_out(stream: Stream, artifact: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Its own store: the current version's graph truncated after promotion. The follower counts the failed load,
    says so in one line however long it lasts, trains nothing, and follows the next good version."""
    store = ArtifactStore.from_settings(settings := stream.settings.model_copy(update={
        "artifact_dir": tmp_path / "store", "artifact_cache_dir": tmp_path / "cache"}))
    store.promote(store.push(renamed(artifact, tmp_path / "bad", "bad")))
    graph = store.local_copy("bad") / "gru4rec.onnx"
    graph.write_bytes(graph.read_bytes()[:100])
    stream.send(ROUND_CLICKS)
    registry = CollectorRegistry()

    async def damaged_then_good() -> list:
        follower = Follower(settings.model_copy(update={"follow_poll_seconds": 0.2}), FollowerMetrics(registry))
        following = asyncio.create_task(follower.run(rounds=1))
        await asyncio.sleep(3.0)
        assert not following.done()  # waiting, not dead
        await asyncio.to_thread(lambda: store.promote(store.push(renamed(artifact, tmp_path / "good", "good"))))
        return await asyncio.wait_for(following, timeout=120.0)

    with caplog.at_level("WARNING", logger="training.follow"):
        [outcome] = asyncio.run(damaged_then_good())
    assert registry.get_sample_value("nextclick_follow_failures_total", {"stage": "load"}) >= 5
    assert len([r for r in caplog.records if "does not load" in r.getMessage()]) == 1
    assert json.loads((store.local_copy(outcome.version) / "manifest.json").read_text())["lineage"]["parent"] == "good"


def test_a_refused_update_is_not_tried_again_on_the_same_clicks(tmp_path: Path) -> None:
    settings = Settings(artifact_dir=tmp_path / "store", follow_interval_clicks=100, follow_min_clicks=10,
                        follow_interval_seconds=3600.0)
    follower = Follower(settings, FollowerMetrics(CollectorRegistry()))
    follower.windows = {0: Window(0, [TopicClick("s", "i", 0.0, 0, n) for n in range(150)])}
    assert follower.due()
    follower.held_at_update = follower.held_clicks()  # an update ran on these 150 and was refused
    assert not follower.due()
    follower.windows[0].clicks += [TopicClick("s", "i", 0.0, 0, n) for n in range(150, 250)]
    assert follower.due()
