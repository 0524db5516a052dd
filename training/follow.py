"""`python -m training.follow`: the served models keep learning from the click stream.

    python -m training.follow              # runs until stopped; configured by NEXTCLICK_FOLLOW_* and the rest
    python -m training.follow --rounds 1   # one update, then exit

The follower reads the clicks topic from the current version's cut-off (the offsets its lineage records, or
the click time a full retrain's data ended at) and holds the new clicks, checked as the worker checks them (a
click the worker would dead-letter is skipped and counted). Once `follow_interval_clicks` have arrived, or
`follow_interval_seconds` passed with at least `follow_min_clicks`, it splits them per partition: the most
recent `follow_holdout_share` is held out, the rest trains an incremental update (`training.incremental`)
whose lineage records where its clicks end. The quality gate judges the update and the current version on the
held-out clicks, which neither trained on; the update is pushed either way and promoted (and announced, so
workers swap at once) only when it passes. The next update continues from whatever version is current then, a
nightly full retrain's included; restarted, the follower resumes from that version's cut-off, so within one
lineage no click is trained twice. docs/continuous-training.md has the whole picture and the metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import shutil
import sys
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from pathlib import Path

import torch
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from stream_app.inference.artifact_format import ArtifactError, verify_artifact
from stream_app.inference.events import InvalidClick, check_partition, parse_click
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.partition_ends import partition_ends
from stream_app.release.publish import gate_and_push
from stream_app.release.store import ArtifactStore, StoreError
from stream_app.settings import Settings, get_settings
from training.data.click_log import DataError
from training.data.errors import exits_on_data_errors
from training.data.stream_source import TopicClick, TopicRead, click_log
from training.incremental import UpdateBudget, update

logger = logging.getLogger(__name__)

UPDATE_SECONDS_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)


class FollowerMetrics:
    """What the follower exports (docs/continuous-training.md, Metrics)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.versions = Counter("nextclick_follow_versions", "Versions the follower produced, by the gate's verdict",
                                ["outcome"], registry=registry)
        self.failures = Counter("nextclick_follow_failures", "Updates that failed before a verdict, by stage",
                                ["stage"], registry=registry)
        self.lag = Gauge("nextclick_follow_lag_clicks",
                         "Messages on the clicks topic after the current version's cut-off", registry=registry)
        self.held = Gauge("nextclick_follow_held_clicks", "New valid clicks the follower holds for its next update",
                          registry=registry)
        self.update_seconds = Histogram("nextclick_follow_update_seconds",
                                        "One update: training, export, the gate and the push",
                                        buckets=UPDATE_SECONDS_BUCKETS, registry=registry)
        self.skipped = Counter("nextclick_follow_skipped_clicks",
                               "Click messages skipped as the worker would dead-letter them, by reason", ["reason"],
                               registry=registry)
        self.dropped = Counter("nextclick_follow_clicks_dropped",
                               "New clicks dropped untrained beyond follow_max_clicks", registry=registry)


@dataclass(frozen=True)
class Cutoff:
    """Where a version's training clicks end: per partition the first offset that is new, and (a full retrain's
    time cut-off) the time at or before which a click is old."""

    offsets: dict[int, int] | None
    after: float | None

    @classmethod
    def of(cls, manifest: dict, topic: str) -> Cutoff:
        clicks = manifest.get("lineage", {}).get("clicks", {})
        if clicks.get("topic") == topic and clicks.get("offsets") is not None:
            return cls({int(p): int(o) for p, o in clicks["offsets"].items()}, None)
        return cls(None, clicks.get("until"))

    def is_old(self, click: TopicClick) -> bool:
        return self.after is not None and click.timestamp <= self.after


@dataclass
class Window:
    """The new clicks of one partition, from `start` (the current version's cut-off there) on."""

    start: int
    clicks: list[TopicClick] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    version: str
    promoted: bool
    trained_clicks: int
    held_out_clicks: int
    new_items: int
    seconds: float


class Follower:
    def __init__(self, settings: Settings, metrics: FollowerMetrics | None = None, progress: bool = False) -> None:
        self.settings = settings
        self.metrics = metrics or FollowerMetrics()
        self.store = ArtifactStore.from_settings(settings)
        self.budget = UpdateBudget(epochs=settings.follow_epochs, replay_ratio=settings.follow_replay_ratio,
                                   dien=settings.follow_dien)
        self.progress = progress
        self.windows: dict[int, Window] = {}
        self.following: str | None = None  # the version whose cut-off the windows start at
        self.cutoff = Cutoff(None, None)
        self.last_update = time.monotonic()
        self.unloadable: str | None = None  # why the current version last failed to load
        self.held_at_update = 0  # held clicks when the last update (of this version's lineage) started

    async def run(self, rounds: int | None = None) -> list[Outcome]:
        """Follow the topic; with `rounds`, return after that many updates."""
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **aiokafka_client_kwargs(self.settings))
        await consumer.start()
        outcomes: list[Outcome] = []
        try:
            while rounds is None or len(outcomes) < rounds:
                try:
                    current = await asyncio.to_thread(self.current)
                    if current is None:
                        await asyncio.sleep(self.settings.follow_poll_seconds)
                        continue
                    directory, manifest = current
                    self.unloadable = None
                    if manifest["version"] != self.following:
                        await self.start_from(consumer, manifest)
                    await self.fetch(consumer)
                except KafkaError as error:  # the broker away: what is held stays valid, reading resumes
                    self.metrics.failures.labels(stage="read").inc()
                    logger.warning("reading %s failed (%r); trying again", self.settings.clicks_topic, error)
                    await asyncio.sleep(self.settings.follow_poll_seconds)
                    continue
                except (StoreError, ArtifactError) as error:  # a damaged current version: wait for another one
                    self.metrics.failures.labels(stage="load").inc()
                    if str(error) != self.unloadable:  # one line per damage, however long it lasts
                        logger.warning("the current version does not load (%s); waiting for another", error)
                    self.unloadable = str(error)
                    await asyncio.sleep(self.settings.follow_poll_seconds)
                    continue
                if self.due():
                    outcome = await self.update(directory, manifest)
                    if outcome is not None:
                        outcomes.append(outcome)
        finally:
            await consumer.stop()
        return outcomes

    def current(self) -> tuple[Path, dict] | None:
        pointer = self.store.current()
        if pointer is None:
            return None
        directory = self.store.local_copy(pointer.version)
        return directory, verify_artifact(directory)

    async def start_from(self, consumer: AIOKafkaConsumer, manifest: dict) -> None:
        """Hold only what is new to `manifest`'s version: keep the held clicks after its cut-off, read the rest."""
        topic = self.settings.clicks_topic
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            await consumer.force_metadata_update()
            if not (partitions := consumer.partitions_for_topic(topic)):
                logger.info("waiting for topic %s", topic)
                await asyncio.sleep(self.settings.follow_poll_seconds)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.cutoff = cutoff = Cutoff.of(manifest, topic)
        starts = await self.start_offsets(consumer, tps, cutoff)
        if consumer.assignment() != set(tps):
            consumer.assign(tps)
        for tp in tps:
            window, start = self.windows.get(tp.partition), starts[tp.partition]
            if window is not None and window.start <= start <= await consumer.position(tp):
                window.start = start
                window.clicks = [c for c in window.clicks if c.offset >= start and not cutoff.is_old(c)]
            else:
                consumer.seek(tp, start)
                self.windows[tp.partition] = Window(start)
        self.following = manifest["version"]
        self.held_at_update = 0
        logger.info("following %s: new clicks from %s", self.following,
                    ", ".join(f"{p}:{w.start}" for p, w in sorted(self.windows.items())))

    async def start_offsets(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                            cutoff: Cutoff) -> dict[int, int]:
        first = await consumer.beginning_offsets(tps)
        if cutoff.offsets is not None:
            return {tp.partition: max(first[tp], cutoff.offsets.get(tp.partition, 0)) for tp in tps}
        if cutoff.after is None:
            return {tp.partition: first[tp] for tp in tps}
        # a click's record is written after the click: no record before the cut-off time holds a newer click
        found = await consumer.offsets_for_times({tp: int(cutoff.after * 1000) for tp in tps})
        ends = await partition_ends(consumer, tps, self.settings)  # none later: from the partition's end
        return {tp.partition: found[tp].offset if found[tp] is not None else ends[tp] for tp in tps}

    async def fetch(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=int(self.settings.follow_poll_seconds * 1000))
        partitions = len(self.windows)
        for tp, records in batches.items():
            window = self.windows[tp.partition]
            for record in records:
                try:
                    click = parse_click(record.value, key=record.key, max_bytes=self.settings.max_payload_bytes)
                    check_partition(click, record.partition, partitions)
                except InvalidClick as refusal:
                    self.metrics.skipped.labels(reason=str(refusal.reason)).inc()
                    continue
                held = TopicClick(click.session_id, click.item_id, click.timestamp, record.partition, record.offset)
                if not self.cutoff.is_old(held):
                    window.clicks.append(held)
        self.drop_beyond_max()
        lag = sum(max(0, (consumer.highwater(TopicPartition(self.settings.clicks_topic, p)) or w.start) - w.start)
                  for p, w in self.windows.items())
        self.metrics.lag.set(lag)
        self.metrics.held.set(self.held_clicks())

    def held_clicks(self) -> int:
        return sum(len(w.clicks) for w in self.windows.values())

    def drop_beyond_max(self) -> None:
        """Beyond `follow_max_clicks`, drop the oldest held clicks: they will not be trained (counted)."""
        excess = self.held_clicks() - self.settings.follow_max_clicks
        while excess > 0:
            window = min((w for w in self.windows.values() if w.clicks), key=lambda w: w.clicks[0].timestamp)
            drop = min(excess, max(1, len(window.clicks) // 10))
            window.start, window.clicks = window.clicks[drop - 1].offset + 1, window.clicks[drop:]
            self.metrics.dropped.inc(drop)
            excess -= drop

    def due(self) -> bool:
        """Enough new clicks since the last update: after a refusal the same clicks alone never make another."""
        held, settings = self.held_clicks(), self.settings
        waited = time.monotonic() - self.last_update >= settings.follow_interval_seconds
        new = held - self.held_at_update
        return new >= settings.follow_interval_clicks or (waited and new >= settings.follow_min_clicks)

    def split(self) -> tuple[list[TopicClick], list[TopicClick], dict[str, int]]:
        """(trained, held out, where the trained clicks end per partition): the newest share of each partition
        is held out for the gate and trained by the next update."""
        trained, held_out, ends = [], [], {}
        for partition, window in sorted(self.windows.items()):
            clicks = window.clicks
            n_held = math.ceil(self.settings.follow_holdout_share * len(clicks)) if len(clicks) > 1 else 0
            cut = len(clicks) - n_held
            trained += clicks[:cut]
            held_out += clicks[cut:]
            ends[str(partition)] = clicks[cut].offset if n_held else (clicks[-1].offset + 1 if clicks else window.start)
        return trained, held_out, ends

    async def update(self, directory: Path, manifest: dict) -> Outcome | None:
        started = time.monotonic()
        self.last_update, self.held_at_update = started, self.held_clicks()
        trained, held_out, ends = self.split()
        topic, settings = self.settings.clicks_topic, self.settings
        source = f"kafka topic {topic}: {len(trained):,} clicks after {manifest['version']}'s cut-off"
        held_sessions = click_log(TopicRead(held_out, Tally(), source)).sessions_as_ids() if held_out else []
        cutoff = {"topic": topic, "offsets": ends, "until": max((c.timestamp for c in trained), default=None),
                  "from": {str(p): w.start for p, w in sorted(self.windows.items())}}
        out = settings.artifact_dir / "staging" / f"follow-{time.time_ns()}"
        try:
            made = await asyncio.to_thread(update, directory, click_log(TopicRead(trained, Tally(), source)), out,
                                           budget=self.budget, cutoff=cutoff, held_out=held_sessions,
                                           settings=settings, progress=self.progress)
        except (DataError, ValueError) as error:
            self.metrics.failures.labels(stage="train").inc()
            logger.error("incremental update after %s failed: %s", manifest["version"], error)
            shutil.rmtree(out, ignore_errors=True)
            return None
        try:
            published = await asyncio.to_thread(gate_and_push, out, held_sessions, settings,
                                                source=f"the {len(held_out):,} newest clicks of {topic}")
        except Exception:
            self.metrics.failures.labels(stage="publish").inc()
            logger.exception("publishing %s failed", made.version)
            return None
        finally:
            shutil.rmtree(out, ignore_errors=True)
        promoted = published.pointer is not None
        seconds = time.monotonic() - started
        self.metrics.versions.labels(outcome="promoted" if promoted else "refused").inc()
        self.metrics.update_seconds.observe(seconds)
        logger.info("%s (%s, %d new items, %d clicks trained, %d replayed sessions) in %.1f s: %s",
                    made.version, "promoted" if promoted else "refused, kept in the store", made.new_items,
                    len(trained), made.replayed_sessions, seconds, published.decision.summary())
        return Outcome(made.version, promoted, len(trained), len(held_out), made.new_items, seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.follow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="stop after this many updates (default: never)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training (default: torch's own)")
    parser.add_argument("--progress", action="store_true", help="progress bars while training")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = get_settings()
    if settings.follow_metrics_port:
        start_http_server(settings.follow_metrics_port)
    with exits_on_data_errors(parser):
        asyncio.run(Follower(settings, progress=args.progress).run(args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
