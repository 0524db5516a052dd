"""Training data straight from the clicks topic: what the deployed system served, as click logs.

    python -m training.retrain --from-topic --since 2026-11-15 --until 2026-11-22
    python -m training.retrain --from-topic clicks --offsets 0:0-250000,1:0-249000

Clicks are read with aiokafka outside any consumer group (nothing is committed, the workers'
offsets are untouched) and checked exactly as the worker checks them (`stream_app.inference.events`): a
message the worker would dead-letter is skipped here too, and counted by reason. A time window
selects clicks by their own `timestamp` (reading starts where the broker's time index puts
`--since`, and stops at each partition's end as it was when reading began); `--offsets` selects
per-partition offset ranges instead. A session's clicks keep the order the worker served them in
(one partition per session, offset order); sessions are ordered by their first click's time.
The sessions whose last click falls in the final `--holdout` seconds are held out for evaluation
(and the quality gate), as the standard YOOCHOOSE split holds out its last day.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from stream_app.inference.events import InvalidClick, check_partition, parse_click
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.settings import Settings, get_settings
from training.data.click_log import ClickLog, DataError

HOLDOUT_SECONDS = 86_400.0  # the last day, as in the standard YOOCHOOSE split
FETCH_TIMEOUT_MS = 1000


def unix_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC unless it names its zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither Unix seconds nor an ISO 8601 time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def offset_ranges(text: str) -> dict[int, tuple[int, int | None]]:
    """`0:100-5000,1:0-` → {0: (100, 5000), 1: (0, None)}: [start, end) per partition, no end = the log end."""
    ranges = {}
    try:
        for part in text.split(","):
            partition, span = part.split(":")
            start, end = span.split("-")
            ranges[int(partition)] = (int(start), int(end) if end else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PARTITION:START-END[,...] (END may be empty)") from None
    return ranges


def add_topic_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data from the clicks topic (instead of files)")
    group.add_argument("--from-topic", nargs="?", const=get_settings().clicks_topic, metavar="TOPIC",
                       help="read the training data from this topic (default: NEXTCLICK_CLICKS_TOPIC) on "
                            "NEXTCLICK_BOOTSTRAP_SERVERS")
    group.add_argument("--since", type=unix_time, help="first click time (Unix s or ISO 8601)")
    group.add_argument("--until", type=unix_time, help="click times before this (Unix s or ISO 8601)")
    group.add_argument("--offsets", type=offset_ranges, metavar="P:START-END,...",
                       help="per-partition offset ranges instead of a time window")
    group.add_argument("--holdout", type=float, default=HOLDOUT_SECONDS, metavar="SECONDS",
                       help="hold out the sessions ending in the last SECONDS (default: %(default)s)")


@dataclass(frozen=True, slots=True)
class TopicClick:
    session_id: str
    item_id: str
    timestamp: float
    partition: int
    offset: int


@dataclass
class TopicRead:
    clicks: list[TopicClick]  # per partition in offset order, partitions one after another
    skipped: Counter  # refused messages by reason
    source: str


async def read_topic(
    settings: Settings,
    topic: str,
    *,
    since: float | None = None,
    until: float | None = None,
    offsets: dict[int, tuple[int, int | None]] | None = None,
    progress: bool = True,
) -> TopicRead:
    """The valid clicks of `topic` in the window (times, or offset ranges), as the worker would see them."""
    if offsets is not None and (since is not None or until is not None):
        raise ValueError("choose a time window or offset ranges, not both")
    consumer = AIOKafkaConsumer(
        group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **aiokafka_client_kwargs(settings)
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            raise DataError(f"topic {topic!r} does not exist on {settings.bootstrap_servers}")
        partitions = sorted(consumer.partitions_for_topic(topic))
        if offsets is not None and (unknown := set(offsets) - set(partitions)):
            raise DataError(f"topic {topic!r} has no partition {sorted(unknown)} (it has {partitions})")
        spans = await _spans(consumer, topic, partitions, since, offsets)
        read = TopicRead([], Counter(), "")
        with tqdm(unit="msg", desc=f"reading {topic}", disable=not progress) as bar:
            for tp, (start, stop) in spans.items():
                stopped = await _read_partition(consumer, tp, start, stop, len(partitions), settings, read, bar)
                spans[tp] = (start, stopped)
    finally:
        await consumer.stop()
    read.clicks = [
        click for click in read.clicks
        if (since is None or click.timestamp >= since) and (until is None or click.timestamp < until)
    ]
    window = ", ".join(f"{tp.partition}:{start}-{stop}" for tp, (start, stop) in spans.items())
    times = f" times [{since}, {until})" if since is not None or until is not None else ""
    read.source = f"kafka {settings.bootstrap_servers} topic {topic} offsets {window}{times}"
    return read


async def _spans(
    consumer: AIOKafkaConsumer,
    topic: str,
    partitions: list[int],
    since: float | None,
    offsets: dict[int, tuple[int, int | None]] | None,
) -> dict[TopicPartition, tuple[int, int | None]]:
    """Per partition, the first offset to read and the one to stop before (None: the log end)."""
    tps = [TopicPartition(topic, p) for p in partitions]
    first = await consumer.beginning_offsets(tps)
    if offsets is not None:
        return {
            (tp := TopicPartition(topic, partition)): (max(start, first[tp]), stop)
            for partition, (start, stop) in offsets.items()
        }
    if since is None:
        return {tp: (first[tp], None) for tp in tps}
    found = await consumer.offsets_for_times({tp: int(since * 1000) for tp in tps})
    return {tp: (max(found[tp].offset, first[tp]), None) for tp in tps if found[tp] is not None}


async def _read_partition(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    stop: int | None,
    partitions: int,
    settings: Settings,
    read: TopicRead,
    bar: tqdm,
) -> int:
    """Read [start, stop) of one partition into `read`; return where it stopped.

    Without `stop`, reading ends at the partition's high watermark of the first fetch (the log end
    when reading began). That comes from the fetch itself, not from ListOffsets: the embedded test
    broker answers ListOffsets(latest) with a wrong offset for batches of several records.
    """
    consumer.assign([tp])
    consumer.seek(tp, start)
    limit = None
    while limit is None or await consumer.position(tp) < limit:
        records = (await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS)).get(tp, [])
        if limit is None and (end := consumer.highwater(tp)) is not None:
            limit = end if stop is None else min(stop, end)
            bar.total = (bar.total or 0) + max(0, limit - start)
        for record in records:
            if record.offset >= limit:
                break
            bar.update()
            try:
                click = parse_click(record.value, key=record.key, max_bytes=settings.max_payload_bytes)
                check_partition(click, record.partition, partitions)
            except InvalidClick as refusal:
                read.skipped[str(refusal.reason)] += 1
                continue
            read.clicks.append(
                TopicClick(click.session_id, click.item_id, click.timestamp, record.partition, record.offset)
            )
    return limit


def click_log(read: TopicRead) -> ClickLog:
    """The clicks as a `ClickLog`: sessions contiguous, in served order, ordered by first click time."""
    by_session: dict[str, list[TopicClick]] = {}
    for click in read.clicks:
        by_session.setdefault(click.session_id, []).append(click)
    # stable: sessions starting at the same time keep the order they were read in
    sessions = sorted(by_session.values(), key=lambda session: session[0].timestamp)
    ordered = [click for session in sessions for click in session]
    return ClickLog(
        np.array([c.session_id for c in ordered], dtype=object),
        np.array([c.item_id for c in ordered], dtype=object),
        np.array([c.timestamp for c in ordered], dtype=np.float64),
        read.source,
    )


def split_holdout(log: ClickLog, seconds: float) -> tuple[ClickLog, ClickLog]:
    """(train, test): test holds the sessions whose last click is in the final `seconds` of the log."""
    if not log.n_clicks:
        raise DataError(f"{log.source}: no valid clicks in the window")
    offsets = log.session_offsets()
    last_times = np.maximum.reduceat(log.times, offsets[:-1])
    held_out = np.repeat(last_times >= log.times.max() - seconds, np.diff(offsets))
    train, test = (ClickLog(log.session_ids[mask], log.item_ids[mask], log.times[mask], log.source)
                   for mask in (~held_out, held_out))
    if not train.n_clicks:
        raise DataError(f"{log.source}: every session ends in the last {seconds} s; shorten --holdout")
    if not test.n_clicks:
        raise DataError(f"{log.source}: no session ends in the last {seconds} s; lengthen --holdout")
    return train, test


def topic_click_logs(args: argparse.Namespace) -> tuple[ClickLog, ClickLog]:
    """(train, test) click logs from the topic named by `--from-topic`, with retrain's arguments."""
    read = asyncio.run(read_topic(get_settings(), args.from_topic, since=args.since, until=args.until,
                                  offsets=args.offsets, progress=not args.no_progress))
    if read.skipped:
        print(f"{sum(read.skipped.values()):,} invalid click messages skipped (" +
              ", ".join(f"{reason}: {count:,}" for reason, count in read.skipped.most_common()) + ")")
    return split_holdout(click_log(read), args.holdout)
