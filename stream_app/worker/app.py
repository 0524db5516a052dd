"""The nextclick worker: clicks in, next-item suggestions out.

    python -m stream_app worker -l info        # settings from NEXTCLICK_* (stream_app.settings)

Clicks (JSON, keyed by session id) are read in micro-batches; each session's recent items and
GRU hidden state live in the `sessions` table (one compact record per session, written once per
batch: `stream_app.inference.sessions.SessionState`), whose changelog lets a restarted or rebalanced worker
carry on. Suggestions go to the recommendations topic keyed by session id, encoded once and handed
to the producer without waiting for each delivery; refused clicks go unchanged to the dead-letter
topic (format: `stream_app.worker.dead_letters`). Every worker reads the whole catalogue topic
(`stream_app.worker.catalogue_reader`) and never suggests what it hides. Delivery is at-least-once:
faust commits a batch's offsets only after flushing the producer (the suggestions and changelog
records handed to it), so a crash can repeat suggestions, never lose clicks.

A suggestion is a JSON object (`stream_app.inference.suggestion.Suggestion`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence

import faust
from aiokafka import AIOKafkaClient
from aiokafka.structs import ConsumerRecord

from stream_app.inference.catalogue import Catalogue
from stream_app.inference.catalogue_records import InvalidItemRecord
from stream_app.inference.events import InvalidClick, InvalidMessage, Reason, check_partition, parse_click
from stream_app.inference.partitioning import partition_for_key
from stream_app.inference.served_pipeline import LIVE_INDEX_SETTINGS, live_neighbours
from stream_app.inference.sessions import SessionState
from stream_app.inference.suggestion import SourcedClick, Suggestion
from stream_app.kafka_security import aiokafka_client_kwargs, faust_credentials
from stream_app.partition_ends import checked_ends
from stream_app.settings import get_settings
from stream_app.worker.broker_watch import BrokerWatch, worker_topics
from stream_app.worker.catalogue_reader import CatalogueReader
from stream_app.worker.clicks_reader import ClicksReader
from stream_app.worker.dead_letters import dead_letter
from stream_app.worker.faust_adapter import (
    KeyPartitionedTable,
    TunedApp,
    event_context,
    ready_batches,
    recovered_once,
    send_record,
)
from stream_app.worker.metrics import ActiveSessionCount, WorkerMetrics, add_web_endpoints, latency_observable
from stream_app.worker.model_swap import ServedModel

logger = logging.getLogger(__name__)

settings = get_settings()
metrics = WorkerMetrics()
metrics.live_quality_min_share.set(settings.live_quality_min_share)

app = TunedApp(
    settings.app_id,
    broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
    broker_credentials=faust_credentials(settings),
    store=settings.table_store,
    datadir=settings.table_dir,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.topic_replication_factor,
    processing_guarantee="at_least_once",
    producer_acks=-1,
    producer_linger=settings.producer_linger,
    producer_max_batch_size=settings.producer_max_batch_size,
    consumer_auto_offset_reset="earliest",
    web_port=settings.web_port,
    web_bind=settings.web_bind,
    # faust's own settings for its /table/ and /router/ views: off unless NEXTCLICK_WEB_FAUST_VIEWS (docs/serving.md)
    web_tables_enabled=settings.web_faust_views,
    web_router_enabled=settings.web_faust_views,
    broker_session_timeout=settings.broker_session_timeout,
    broker_heartbeat_interval=settings.broker_heartbeat_interval,
    broker_rebalance_timeout=settings.broker_rebalance_timeout,
    broker_commit_interval=settings.broker_commit_interval,
    consumer_fetch_max_wait=settings.consumer_fetch_max_wait,
    partition_ends=functools.partial(checked_ends, settings),  # what the tables recover up to (faust_adapter)
    Table=KeyPartitionedTable,
)

# internal=True: faust creates the clicks topic when missing, with `settings.partitions` (the
# session table's count; faust's assignor refuses an existing topic that differs).
clicks_topic = app.topic(
    settings.clicks_topic,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
    internal=True,
)
recommendations_topic = app.topic(
    settings.recommendations_topic,
    key_serializer="raw",
    value_serializer="raw",  # suggestions arrive as JSON bytes (`Suggestion.encoded`)
    partitions=settings.partitions,
)
dead_letter_topic = app.topic(
    settings.dead_letter_topic, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
)

# Entries live on their key's partition (KeyPartitionedTable), the partition `events.check_partition`
# makes every click arrive on: a session's state and clicks are always owned by the same worker.
sessions = app.Table(
    "sessions",
    key_type=bytes,  # the session id in UTF-8, exactly the clicks' message key
    value_type=bytes,  # SessionState.dumps(), held as it is; faust reads `bytes` as the raw codec
    partitions=settings.partitions,
)

app.sensors.add(ActiveSessionCount(sessions, metrics.active_sessions))  # sessions evicted between sweeps

model_loaded = asyncio.Event()
catalogue = Catalogue() if settings.catalogue_rules else None
neighbours = (  # the kNN pipelines' index of every partition's sessions (docs/serving.md, Session-kNN)
    live_neighbours(settings) if settings.serving_model in LIVE_INDEX_SETTINGS else None
)
served = ServedModel(settings, metrics, loaded=model_loaded, catalogue=catalogue, neighbours=neighbours)
clicks_reader = ClicksReader(settings, neighbours, metrics) if neighbours is not None else None


broker_watch = BrokerWatch(metrics, grace=settings.broker_ready_grace)
output_topics_declared = asyncio.Event()


def readiness_checks() -> dict[str, bool]:
    return {
        "model_loaded": model_loaded.is_set(),
        "catalogue_loaded": catalogue_reader is None or catalogue_reader.loaded.is_set(),
        "knn_index_loaded": clicks_reader is None or clicks_reader.loaded.is_set(),
        "partitions_assigned": recovered_once(app) and not app.rebalancing,
        "tables_recovered": not app.in_recovery,
        "broker_reachable": broker_watch.reachable(),
        "topics_present": broker_watch.topics_present(),
    }


add_web_endpoints(app, metrics, readiness_checks, broker_watch.reasons)


@app.task
async def declare_output_topics() -> None:
    """Create the topics the worker writes to, if missing (faust only creates what it consumes)."""
    for topic in (recommendations_topic, dead_letter_topic):
        await topic.maybe_declare()
    output_topics_declared.set()


def expected_topics() -> dict[str, int] | None:
    """The worker's topics and their partition counts, once they all exist (None before: nothing to verify)."""
    if not (output_topics_declared.is_set() and recovered_once(app)):  # faust has created clicks and changelog
        return None
    catalogue_partitions = catalogue_reader.partitions if catalogue_reader is not None else None
    return worker_topics(settings, sessions.changelog_topic.get_topic_name(), catalogue_partitions)


@app.task
async def watch_broker() -> None:
    """Ask the broker for its metadata every `broker_check_interval` (`stream_app.worker.broker_watch`)."""
    client: AIOKafkaClient | None = None
    try:
        while True:
            if client is None:
                client = AIOKafkaClient(**aiokafka_client_kwargs(settings), client_id=f"{settings.app_id}-broker-watch")
                try:
                    await asyncio.wait_for(client.bootstrap(), settings.broker_check_interval)
                except Exception as exc:  # no broker answers yet: try again at the next tick
                    await client.close()
                    client = None
                    broker_watch.no_answer(exc)
            if client is not None:
                await broker_watch.check(client, expected_topics(), timeout=settings.broker_check_interval)
            await asyncio.sleep(settings.broker_check_interval)
    finally:
        if client is not None:
            await client.close()


@app.task
async def load_model() -> None:
    """Serve the fixed artifact (retrying until it loads), or the store's current version and every
    later promotion or rollback, swapped in without a restart (`stream_app.worker.model_swap`)."""
    await served.run()


async def send_dead_letter(
    key: bytes | None, value: bytes | None, refusal: InvalidMessage, topic: str, partition: int, offset: int
) -> bool:
    """Send a refused message to the dead-letter topic; False (and an error counted) when that failed."""
    letter = dead_letter(key, value, refusal, topic=topic, partition=partition, offset=offset)
    try:
        await dead_letter_topic.send(key=letter.key, value=letter.value, headers=letter.headers)
    except Exception:
        metrics.errors.labels(stage="dead_letter").inc()
        logger.exception("dead-lettering %s[%d]@%d failed", topic, partition, offset)
        return False
    return True


async def refuse_click(message: faust.types.Message, refusal: InvalidClick) -> None:
    if await send_dead_letter(message.key, message.value, refusal, message.topic, message.partition, message.offset):
        metrics.dead_letters.labels(reason=str(refusal.reason)).inc()


async def refuse_catalogue_record(record: ConsumerRecord, refusal: InvalidItemRecord) -> bool:
    return await send_dead_letter(record.key, record.value, refusal, record.topic, record.partition, record.offset)


catalogue_reader = (
    CatalogueReader(settings, catalogue, metrics, refuse_catalogue_record) if catalogue is not None else None
)


@app.task
async def follow_catalogue() -> None:
    """Read the catalogue topic into the item table, whole at start, then live (`catalogue_reader`)."""
    if catalogue_reader is not None:
        await catalogue_reader.run()


@app.task
async def follow_clicks() -> None:
    """Read the whole clicks topic into the session index, its recent tail at start, then live (`clicks_reader`)."""
    if clicks_reader is not None:
        await clicks_reader.run()


def validated(message: faust.types.Message) -> SourcedClick:
    click = parse_click(message.value, key=message.key, max_bytes=settings.max_payload_bytes)
    check_partition(click, message.partition, settings.partitions)
    return SourcedClick(click, message.partition, message.offset)


def delivered(delivery: asyncio.Future) -> None:
    if delivery.cancelled() or delivery.exception() is not None:
        metrics.errors.labels(stage="publish").inc()
        logger.error("a record was not delivered: %r", None if delivery.cancelled() else delivery.exception())


async def send_suggestions(suggestions: Sequence[Suggestion], fetched_at: Sequence[float]) -> None:
    """Hand each suggestion to the producer, in click order, and observe its latencies.

    The delivery is not awaited here: the producer batches the records, and faust flushes it before
    committing the offsets of the clicks they answer (at least once); a failed delivery is counted.
    """
    topic = recommendations_topic.get_topic_name()
    for suggestion, fetched in zip(suggestions, fetched_at, strict=True):
        produced_at = time.time()
        click = suggestion.answers.click
        try:
            delivery = await send_record(app, topic, click.session_id.encode("utf-8"), suggestion.encoded(produced_at))
        except Exception:
            metrics.errors.labels(stage="publish").inc()
            logger.exception("publishing the suggestion for session %r failed", click.session_id)
            continue
        delivery.add_done_callback(delivered)
        metrics.processing_latency.observe(time.monotonic() - fetched)
        metrics.suggestions_published.inc()
        if latency_observable(produced_at, click.timestamp):
            metrics.end_to_end_latency.observe(max(0.0, produced_at - click.timestamp))
        else:
            metrics.latency_unobserved.inc()


async def write_states(states: dict[bytes, SessionState], last_event_of: dict[bytes, faust.EventT]) -> None:
    """Store each session's new state and hand its changelog record to the producer ourselves.

    Not `sessions[key] = record`: faust queues that changelog record in its own buffer, and flushing
    that buffer (before a commit, on a rebalance) gives up after 0.1 s without a send, so on a busy
    worker offsets got committed and partitions handed over while the records were still queued; the
    next owner then served those sessions from an older state. Handed to the producer here, a record
    is in what faust's flush waits for before the batch's offsets are committed.
    """
    changelog = sessions.changelog_topic.get_topic_name()
    # a state keeps the offsets of its clicks that may still come again (SessionState.forget_committed)
    committed = {
        tp.partition: offset for tp, offset in app.committed_offsets.items() if tp.topic == settings.clicks_topic
    }
    for session_key, state in states.items():
        event = last_event_of[session_key]
        state.forget_committed(committed.get(event.message.partition))
        record = state.dumps()
        if session_key not in sessions.data:
            metrics.active_sessions.inc()  # a new session (ActiveSessionCount counts the deletes)
        with event_context(event):  # a RocksDB store files the entry under the event's partition
            sessions.data[session_key] = record
        try:  # to the session's partition: check_partition made every click arrive on it
            delivery = await send_record(app, changelog, session_key, record, partition=event.message.partition)
        except Exception:
            metrics.errors.labels(stage="changelog").inc()
            logger.exception("writing the changelog record of session %r failed", session_key)
            continue
        delivery.add_done_callback(delivered)


async def serve_batch(events: Sequence[faust.EventT]) -> None:
    """Validate, score and publish one micro-batch; nothing in it may stop the worker.

    Not while the broker has lost a topic of the worker: the batch waits, uncommitted, until they are back."""
    await broker_watch.wait_for_topics()
    started = time.monotonic()
    metrics.batch_size.observe(len(events))
    metrics.events_consumed.inc(len(events))
    clicks: list[tuple[SourcedClick, faust.EventT]] = []
    for event in events:
        try:
            clicks.append((validated(event.message), event))
        except InvalidClick as refusal:
            await refuse_click(event.message, refusal)
        except Exception as exc:  # a bug in validation must cost one message, not the stream
            metrics.errors.labels(stage="validate").inc()
            logger.exception("validating a click failed")
            await refuse_click(event.message, InvalidClick(Reason.PROCESSING_ERROR, repr(exc)[:200]))
    if not clicks:
        return

    await model_loaded.wait()  # refusals above flow even while the model is still loading
    if catalogue_reader is not None:
        await catalogue_reader.loaded.wait()  # never serve what the catalogue has hidden before the worker read it
    if clicks_reader is not None:
        await clicks_reader.loaded.wait()  # kNN answers from a full index only
        for sourced, _ in clicks:  # the worker's own clicks count at once, before the reader gets to them
            neighbours.observe(sourced.click.session_id, sourced.click.item_id, sourced.click.timestamp, sourced.offset)
    try:  # the served versions are read once: a swap lands between two batches, never inside one
        result = served.recommend([sourced for sourced, _ in clicks], sessions, now=time.time())
    except Exception as exc:
        metrics.errors.labels(stage="score").inc()
        logger.exception("scoring a batch of %d clicks failed; dead-lettering it", len(clicks))
        for _, event in clicks:
            await refuse_click(event.message, InvalidClick(Reason.PROCESSING_ERROR, repr(exc)[:200]))
        return
    served.live_quality.observe(result.judgements)
    # the suggestions first: the changelog records are bookkeeping no click waits for, and both are handed to the
    # producer before the batch's offsets can be committed (at least once either way)
    # stamped when the consumer hands the record over (monotonic clock: stream_app.worker.faust_adapter._Consumer)
    fetched_at = [event.message.time_in or started for _, event in clicks]
    await send_suggestions(result.suggestions, fetched_at)
    await asyncio.sleep(0)  # the producer's sender may ship a full batch of them now
    last_event_of = {sourced.click.session_id.encode(): event for sourced, event in clicks}
    await write_states(result.states, last_event_of)


@app.agent(clicks_topic)
async def recommend(stream: faust.StreamT[bytes]) -> None:
    """Serve clicks in micro-batches of what has arrived: one model call scores up to `batch_size` of them."""
    async for events in ready_batches(stream, settings.batch_size):
        await serve_batch(events)


EVICTION_SLICE = 500  # sessions examined between two yields to the event loop (a few ms)


@app.timer(interval=settings.eviction_interval)
async def evict_idle_sessions() -> None:
    await sweep_sessions()


@app.on_rebalance_complete.connect
async def count_recovered_sessions(sender: faust.App, **kwargs: object) -> None:
    """After a (re)start or rebalance the table holds what its changelog restored: count it now."""
    await sweep_sessions()


async def sweep_sessions() -> None:
    """Forget sessions idle for longer than the TTL, on the partitions this worker owns; count the rest.

    In slices, letting batches run in between: one pass over 100,000 sessions would hold the clicks
    back for a good part of a second, every `eviction_interval`. A rebalance may land between two
    slices: each slice reads the partitions owned afresh, and the sweep stops during a rebalance."""
    deadline = time.time() - settings.session_ttl
    active = 0
    keys = list(sessions.keys())
    for start in range(0, len(keys), EVICTION_SLICE):
        if app.rebalancing:
            return  # the count would be partial: the next sweep sets the gauge
        changelog = sessions.changelog_topic.get_topic_name()
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog}
        for session_key in keys[start : start + EVICTION_SLICE]:
            record = sessions.get(session_key)  # a batch in between may have written or dropped it
            if record is None or partition_for_key(session_key, settings.partitions) not in owned:
                continue
            if SessionState.last_seen_of(record) < deadline:
                del sessions[session_key]
            else:
                active += 1
        await asyncio.sleep(0)
    metrics.active_sessions.set(active)


@app.timer(interval=settings.consumer_lag_interval)
async def measure_consumer_lag() -> None:
    """Export each owned clicks partition's lag (log end offset minus committed offset), as
    consumer-group tools count it; a partition with no commit yet counts from its log start."""
    owned = [tp for tp in app.assignor.assigned_actives() if tp.topic == settings.clicks_topic]
    # the offsets the broker holds as committed (as this worker last learnt them), read before any await
    committed = {tp: app.committed_offsets.get(tp) for tp in owned}
    uncommitted = [tp for tp, offset in committed.items() if offset is None]
    try:
        log_ends = await app.consumer.highwaters(*owned) if owned else {}
        log_starts = await app.consumer.earliest_offsets(*uncommitted) if uncommitted else {}
    except Exception:  # e.g. a leader moving mid-request: the next tick measures again
        metrics.errors.labels(stage="consumer_lag").inc()
        logger.warning("measuring the consumer lag failed", exc_info=True)
        return
    metrics.consumer_lag.clear()  # partitions moved to another worker are reported by that worker
    for tp, offset in committed.items():
        lag = log_ends[tp] - (log_starts[tp] if offset is None else offset)
        metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, lag))
