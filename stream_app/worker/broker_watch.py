"""Whether the broker answers, and still holds the worker's topics: a metadata request every few seconds.

A broker that is frozen or down keeps a worker's partitions assigned (its group membership only lapses
on the broker), so `/readyz` would stay 200; a broker that lost its topics (the embedded broker's memory
storage, after a restart) acknowledges produce requests to topics that no longer exist, so the worker
would count suggestions as published that nobody can read. `BrokerWatch` asks the broker for its
metadata (all topics: asking for named ones could make a broker create them) every
`NEXTCLICK_BROKER_CHECK_INTERVAL` seconds on a client of its own (public aiokafka API), and tells
`/readyz`:

- `broker_reachable`: false once `NEXTCLICK_BROKER_READY_GRACE` seconds passed without an answer;
- `topics_present`: false while one of the worker's topics (`worker_topics`) is missing or has another partition
  count.

While topics are missing the worker serves no batch (`wait_for_topics`): its clicks stay uncommitted
and nothing is counted as published. Each fault is logged in one line and counted
(`nextclick_broker_faults_total{fault}`) when it starts, and logged again when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaClient

from stream_app.settings import Settings
from stream_app.worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

BROKER_FAULTS = ("unreachable", "topics_missing")  # the `fault` label of nextclick_broker_faults_total


def worker_topics(settings: Settings, changelog: str, catalogue_partitions: int | None) -> dict[str, int]:
    """The topics a worker needs and their partition counts: the clicks, recommendations, dead-letter and changelog
    topics with `NEXTCLICK_PARTITIONS`; the catalogue topic, which the worker reads outside the consumer group, with
    the partitions it had when the worker started reading it (`catalogue_partitions`; None: not read, or not yet)."""
    names = (settings.clicks_topic, settings.recommendations_topic, settings.dead_letter_topic, changelog)
    topics = dict.fromkeys(names, settings.partitions)
    if catalogue_partitions is not None:
        topics[settings.catalogue_topic] = catalogue_partitions
    return topics


class BrokerWatch:
    def __init__(self, metrics: WorkerMetrics, grace: float, clock: Any = time.monotonic) -> None:
        self.metrics, self.grace, self.clock = metrics, grace, clock
        self.last_answer = clock()  # the grace runs from the start
        self.unreachable = False  # reported as unreachable (logged and counted once per outage)
        self.problems: list[str] = []  # what the last answers said is wrong with the topics
        self.seen = False  # whether the last answer reported a problem with the topics
        self.topics_ok = asyncio.Event()
        self.topics_ok.set()

    def reachable(self) -> bool:
        return self.clock() - self.last_answer <= self.grace

    def topics_present(self) -> bool:
        return not self.problems

    def reasons(self) -> dict[str, str]:
        """Why `broker_reachable` or `topics_present` fails, for `/readyz`."""
        reasons = {}
        if not self.reachable():
            reasons["broker_reachable"] = (
                f"no metadata answer from the broker for {self.clock() - self.last_answer:.1f} s "
                f"(grace {self.grace:g} s)"
            )
        if self.problems:
            reasons["topics_present"] = "topics missing: " + "; ".join(self.problems)
        return reasons

    async def wait_for_topics(self) -> None:
        """Return at once while the topics are there; else once a later answer finds them again."""
        if not self.topics_ok.is_set():
            await self.topics_ok.wait()

    async def check(self, client: AIOKafkaClient, expected: Mapping[str, int] | None, timeout: float) -> None:
        """One metadata request; `expected`: topic -> partitions to verify (None: only whether it answers)."""
        try:
            cluster = await asyncio.wait_for(client.fetch_all_metadata(), timeout)
        except Exception as exc:  # a timeout, a refused connection, no broker known: all mean no answer
            self.no_answer(exc)
            return
        self.answered()
        if expected is None:
            return
        problems = []
        for topic, partitions in expected.items():
            found = cluster.partitions_for_topic(topic)
            if not found:
                problems.append(f"{topic} does not exist")
            elif len(found) != partitions:
                problems.append(f"{topic} has {len(found)} partitions, expected {partitions}")
        self.topics_found(problems)

    def no_answer(self, exc: BaseException | None = None) -> None:
        if not self.reachable() and not self.unreachable:
            self.unreachable = True
            self.metrics.broker_faults.labels(fault="unreachable").inc()
            logger.warning(
                "the broker has not answered a metadata request for %.1f s (grace %g s): not ready (%r)",
                self.clock() - self.last_answer, self.grace, exc,
            )

    def answered(self) -> None:
        self.last_answer = self.clock()
        if self.unreachable:
            self.unreachable = False
            logger.info("the broker answers again")

    def topics_found(self, problems: list[str]) -> None:
        """What one answer says of the topics; a problem counts once two answers in a row report one (a topic
        being created or electing a leader may be left out of one answer)."""
        seen_before, self.seen = self.seen, bool(problems)
        if problems and not seen_before:
            return
        if problems and not self.problems:
            self.metrics.broker_faults.labels(fault="topics_missing").inc()
            logger.error(
                "the broker lost topics this worker needs (%s): serving stopped, not ready, until they are "
                "back (a broker with memory storage loses them on a restart: restart the worker)",
                "; ".join(problems),
            )
        elif self.problems and not problems:
            logger.info("the worker's topics are back: serving again")
        self.problems = problems
        if problems:
            self.topics_ok.clear()
        else:
            self.topics_ok.set()
