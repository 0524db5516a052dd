"""A running worker follows the artifact store: promotions and rollbacks are served without a restart,
sessions carry over to the new model, and a bad version is refused while the old one keeps serving.

The first tests share one worker and run in order (its history is the story: serve v1, promote v2,
roll back to v1, refuse three bad versions, run v2 as a canary for half the sessions, stop it, run it
again and promote it). Real test-day sessions, real artifacts, a real broker;
each session gets a few clicks in every chapter, so every session spans every swap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.artifact_versions import corrupt, rehash, renamed
from devtools.click_replay import held_out_clicks
from devtools.embedded_broker import EmbeddedBroker
from stream_app.inference.scoring import Scorer
from stream_app.release.publish import (
    canary_checked,
    promote_and_announce,
    rollback_and_announce,
    stop_canary_and_announce,
)
from stream_app.release.store import ArtifactStore
from stream_app.settings import get_settings
from stream_app.worker.canary import canary_position

pytestmark = pytest.mark.broker

SESSIONS = 12  # real test-day sessions with at least CHAPTERS clicks each
# clicks per session sent while serving v1, v2, v1 again, v1 after the refusals, v1 with v2 as a canary,
# v1 after the canary, v2 promoted from a canary
CHAPTERS = (2, 2, 1, 1, 2, 1, 1)
CANARY_SHARE = 0.5
SWAP_TIMEOUT = 20.0


def real_sessions() -> list[tuple[str, list[str]]]:
    """The first SESSIONS test-day sessions long enough for every chapter: (session id, item ids)."""
    items: dict[str, list[str]] = {}
    for click in held_out_clicks(get_settings()):
        items.setdefault(click.session_id, []).append(click.item_id)
    return [(session, clicked) for session, clicked in items.items() if len(clicked) >= sum(CHAPTERS)][
        :SESSIONS
    ]


def chapter_clicks(chapter: int) -> list[tuple[str, str]]:
    """(session id, item id) of one chapter: the sessions' next clicks, each session's in order."""
    first = sum(CHAPTERS[:chapter])
    return [
        (session, item)
        for session, clicked in real_sessions()
        for item in clicked[first : first + CHAPTERS[chapter]]
    ]


@dataclass
class Story:
    worker: Any
    store: ArtifactStore
    scorers: dict[str, Scorer]  # the versions the worker may serve, loaded offline
    pid: int
    history: dict[str, list[str]] = field(default_factory=dict)  # every session's clicks so far
    sent: int = 0

    def send(self, clicks: list[tuple[str, str]]) -> list[tuple[list[str], dict]]:
        """Send clicks; per click, the session's clicks up to it and the one suggestion it got."""
        worker = self.worker
        messages = [
            (s.encode(), json.dumps({"session_id": s, "item_id": i, "timestamp": time.time()}).encode())
            for s, i in clicks
        ]
        written = worker.produce(worker.settings.clicks_topic, messages)
        prefixes = []
        for session, item in clicks:
            self.history.setdefault(session, []).append(item)
            prefixes.append(list(self.history[session]))
        self.sent += len(clicks)
        by_click: dict[tuple[int, int], list[dict]] = {}
        for record in worker.consume(worker.settings.recommendations_topic, self.sent):
            suggestion = json.loads(record.value)
            by_click.setdefault((suggestion["click"]["partition"], suggestion["click"]["offset"]), []).append(
                suggestion
            )
        assert len(by_click) == self.sent and all(len(s) == 1 for s in by_click.values()), "each click once"
        return [
            (prefix, by_click[(w.partition, w.offset)][0])
            for prefix, w in zip(prefixes, written, strict=True)
        ]

    def promote(self, version: str) -> None:
        promote_and_announce(self.store, version, self.worker.settings)

    def wait_serving(self, version: str) -> None:
        self.worker.wait_until(
            lambda: self.worker.metric("nextclick_model_info", artifact_version=version) == 1,
            timeout=SWAP_TIMEOUT,
            what=f"serving {version}",
        )

    def assert_served_by(self, version: str, served: list[tuple[list[str], dict]], offline: Callable) -> None:
        reference = offline(self.scorers[version])
        for prefix, suggestion in served:
            assert suggestion["artifact_version"] == version
            assert suggestion["items"] == reference(prefix), prefix  # the new model on the whole prefix

    def swaps(self, outcome: str) -> float:
        return self.worker.metric("nextclick_model_swaps_total", outcome=outcome)


@pytest.fixture(scope="module")
def story(
    artifact: Path,
    tiny_retrain: Callable[..., Any],
    store_worker: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Story]:
    """A worker in store mode serving v1 of a local store; v2 is another real model (48 units instead of 32,
    another seed) pushed but not promoted."""
    tmp = tmp_path_factory.mktemp("hot-swap")
    other = tmp / "other-model"
    tiny_retrain("--gru4rec-layers", "48", "--gru4rec-seed", "7", "--out", str(other))
    folders = {"v1": renamed(artifact, tmp / "v1", "v1"), "v2": renamed(other, tmp / "v2", "v2")}
    with store_worker(tmp, folders["v1"], folders["v2"]) as (worker, store):
        scorers = {version: Scorer(folder) for version, folder in folders.items()}
        yield Story(worker, store, scorers, worker.process.pid)


def test_the_worker_serves_the_current_version_of_the_store(story: Story, offline_items_of: Callable) -> None:
    story.assert_served_by("v1", story.send(chapter_clicks(0)), offline_items_of)
    assert story.swaps("success") == 1 and story.swaps("refused") == 0


def test_a_promotion_is_served_without_a_restart_and_sessions_carry_over(
    story: Story, offline_items_of: Callable
) -> None:
    story.promote("v2")
    story.wait_serving("v2")
    served = story.send(chapter_clicks(1))
    assert all(len(prefix) > CHAPTERS[0] for prefix, _ in served), "every session clicked under v1 too"
    story.assert_served_by("v2", served, offline_items_of)
    assert story.worker.process.pid == story.pid and story.worker.process.poll() is None
    assert story.swaps("success") == 2
    created = json.loads((story.store.local_copy("v2") / "manifest.json").read_text())["created_at"]
    assert (
        story.worker.metric("nextclick_model_created_timestamp_seconds")
        == datetime.fromisoformat(created).timestamp()
    )


def test_a_rollback_serves_the_previous_version_again(story: Story, offline_items_of: Callable) -> None:
    rollback_and_announce(story.store, story.worker.settings)
    story.wait_serving("v1")
    story.assert_served_by("v1", story.send(chapter_clicks(2)), offline_items_of)
    assert story.swaps("success") == 3


def partial(folder: Path) -> None:
    """A copy that never finished (a file missing)."""
    (folder / "popularity.npy").unlink()


def incompatible(folder: Path, other_graph: Path) -> None:
    """Checksums that pass, but a graph from another model (48 units, another vocabulary) than the
    manifest and item map describe: it loads, and fails the smoke inference."""
    (folder / "gru4rec.onnx").write_bytes(other_graph.read_bytes())
    rehash(folder)


def test_a_corrupt_partial_or_incompatible_version_is_refused_and_the_old_one_keeps_serving(
    story: Story, artifact: Path, tmp_path: Path, offline_items_of: Callable
) -> None:
    other_graph = story.scorers["v2"].artifact_dir / "gru4rec.onnx"
    damages = {"v3": corrupt, "v4": partial, "v5": lambda folder: incompatible(folder, other_graph)}
    for number, (version, damage) in enumerate(damages.items(), start=1):
        story.store.push(renamed(artifact, tmp_path / version, version))
        damage(story.store.local_copy(version))  # the store's own folder: what the worker will read
        story.promote(version)
        story.worker.wait_until(
            lambda number=number: story.swaps("refused") == number,
            timeout=SWAP_TIMEOUT,
            what=f"{version} refused",
        )
        assert f"model swap refused: version {version}" in story.worker.log.read_text()
    assert "sha256" in story.worker.log.read_text() and "smoke inference" in story.worker.log.read_text()
    assert story.worker.metric("nextclick_model_info", artifact_version="v1") == 1
    story.assert_served_by("v1", story.send(chapter_clicks(3)), offline_items_of)
    assert story.swaps("success") == 3 and story.worker.process.pid == story.pid


def canary_sessions() -> set[str]:
    return {session for session, _ in real_sessions() if canary_position(session) < CANARY_SHARE}


def wait_canary(story: Story, version: str | None) -> None:
    """Until the worker serves `version` as its canary (None: no canary)."""
    story.worker.wait_until(
        lambda: story.worker.metric("nextclick_model_info", variant="canary", artifact_version=version or "v2")
        == (0 if version is None else 1),
        timeout=SWAP_TIMEOUT,
        what=f"canary {version}",
    )


def test_a_canary_serves_its_share_of_sessions_each_on_one_version(story: Story, offline_items_of: Callable) -> None:
    on_canary = canary_sessions()
    assert 0 < len(on_canary) < SESSIONS  # the hash splits these real sessions
    canary_checked(story.store, "v2", CANARY_SHARE, story.worker.settings, force=False)
    wait_canary(story, "v2")
    served = story.send(chapter_clicks(4))
    for version, variant in (("v2", "canary"), ("v1", "current")):
        mine = [(prefix, s) for prefix, s in served if (s["session_id"] in on_canary) is (variant == "canary")]
        assert mine and all(s["variant"] == variant for _, s in mine)
        story.assert_served_by(version, mine, offline_items_of)  # the canary too: the whole prefix replayed
    # this chapter's second clicks judge the canary's first suggestions: one per canary session
    judged = story.worker.metric(
        "nextclick_suggestions_judged_total", model="gru4rec", artifact_version="v2", variant="canary"
    )
    assert judged == len(on_canary)
    assert story.worker.metric("nextclick_model_info", variant="current", artifact_version="v1") == 1


def test_a_stopped_canary_hands_its_sessions_back_to_the_current_version(
    story: Story, offline_items_of: Callable
) -> None:
    assert stop_canary_and_announce(story.store, story.worker.settings).version == "v2"
    wait_canary(story, None)
    served = story.send(chapter_clicks(5))
    assert all(s["variant"] == "current" for _, s in served)
    story.assert_served_by("v1", served, offline_items_of)


def test_promoting_the_canary_ends_it(story: Story, offline_items_of: Callable) -> None:
    canary_checked(story.store, "v2", CANARY_SHARE, story.worker.settings, force=False)
    wait_canary(story, "v2")
    story.promote("v2")
    assert story.store.canary() is None
    story.worker.wait_until(
        lambda: story.worker.metric("nextclick_model_info", variant="current", artifact_version="v2") == 1,
        timeout=SWAP_TIMEOUT,
        what="v2 current",
    )
    wait_canary(story, None)
    served = story.send(chapter_clicks(6))
    assert all(s["variant"] == "current" for _, s in served)
    story.assert_served_by("v2", served, offline_items_of)


def test_without_announcements_a_worker_waits_for_a_first_version_then_follows_the_pointer(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path / "store", tmp_path / "cache", keep_versions=2)
    fields = worker_fields(
        broker.bootstrap_servers,
        tmp_path,
        serving_artifact_dir=None,
        artifact_dir=tmp_path / "store",
        model_updates_topic="",
        model_poll_interval=0.3,
    )
    with launch_worker(fields, tmp_path / "worker.log") as worker:
        assert worker.readiness()["checks"]["model_loaded"] is False  # an empty store: nothing to serve yet
        for version in ("v1", "v2"):
            store.push(renamed(artifact, tmp_path / version, version))
            store.promote(version)  # no announcement: the worker has to notice the pointer
            worker.wait_until(
                lambda version=version: worker.metric("nextclick_model_info", artifact_version=version) == 1,
                timeout=SWAP_TIMEOUT,
                what=f"serving {version}",
            )
        assert (
            worker.readiness()["ready"] is True
            and worker.metric("nextclick_model_swaps_total", outcome="success") == 2
        )
