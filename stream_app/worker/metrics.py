"""Prometheus metrics of one worker and the HTTP endpoints operators and Kubernetes probe.

Each worker owns a `CollectorRegistry` (not prometheus-client's global one), so tests and
several apps in one process never share counters. The endpoints ride on faust's own web server:
`/metrics` (Prometheus text format), `/livez` (the event loop answers) and `/readyz`
(200 only when every readiness check passes, 503 with the failing checks, and reasons where known, otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from stream_app.inference.events import Reason

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# fine around the bars a worker's p99 is held to (12 and 15 ms): a quantile read from the buckets is interpolated
# linearly inside one, and a wide bucket over a falling tail reads its p99 high
PROCESSING_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.012, 0.015, 0.02, 0.025, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0
)
PROPAGATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
QUALITY_CUTOFFS = (5, 10, 20)  # live hit-rate@K and MRR@K are exported for these K (those <= top_k)
VERSION_LABELS = ("model", "artifact_version", "variant")  # variant: "current" or "canary"
# Every `stage` of nextclick_errors_total: each series exists (at 0) from the first scrape, so that rates
# and alerts work before the first error (a test checks that the code counts no other stage).
ERROR_STAGES = (
    "validate", "score", "publish", "dead_letter", "consumer_lag",
    "model_watch", "model_updates", "model_fetch", "model_load", "changelog", "catalogue",
)

# A click's own timestamp is the producer's claim: the end-to-end latency is observed only for clicks
# stamped within the last hour (the top bucket is 30 s) and at most a minute ahead of the worker's
# clock. Older or later stamps (a replayed log, a wrong clock, 0 or 1e308) would fill the top bucket
# and fire the latency alert; they are counted in nextclick_latency_unobserved instead.
LATENCY_HORIZON = (3600.0, 60.0)  # seconds before, after the worker's clock


def latency_observable(now: float, click_timestamp: float) -> bool:
    before, after = LATENCY_HORIZON
    return now - before <= click_timestamp <= now + after


class WorkerMetrics:
    """All metrics of one worker, registered in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "nextclick_events_consumed", "Click messages read from the clicks topic.", registry=r
        )
        self.suggestions_published = Counter(
            "nextclick_suggestions_published", "Suggestions sent to the recommendations topic.", registry=r
        )
        self.dead_letters = Counter(
            "nextclick_dead_letters", "Click messages sent to the dead-letter topic.", ["reason"], registry=r
        )
        self.errors = Counter(
            "nextclick_errors", "Unexpected errors, by pipeline stage.", ["stage"], registry=r
        )
        for reason in Reason:
            self.dead_letters.labels(reason=str(reason))
        for stage in ERROR_STAGES:
            self.errors.labels(stage=stage)
        self.end_to_end_latency = Histogram(
            "nextclick_end_to_end_latency_seconds",
            "From the click's own timestamp to its suggestion being handed to the producer.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency_unobserved = Counter(
            "nextclick_latency_unobserved",
            "Suggestions whose click timestamp lies outside LATENCY_HORIZON of the worker's clock, left out "
            "of nextclick_end_to_end_latency_seconds.",
            registry=r,
        )
        self.processing_latency = Histogram(
            "nextclick_processing_latency_seconds",
            "The worker's own time per click: from the consumer handing the record over to its suggestion "
            "being handed to the producer (the broker's long poll and the delivery excluded).",
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self.inference_latency = Histogram(
            "nextclick_inference_latency_seconds",
            "Wall time of one batched model call.",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "nextclick_batch_size", "Clicks per micro-batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.active_sessions = Gauge(
            "nextclick_active_sessions", "Sessions held in this worker's table.", registry=r
        )
        self.model = Info(
            "nextclick_model",
            "A model being served: pipeline, artifact version, provider and exclusion policy, per variant.",
            ["variant"],
            registry=r,
        )
        # Served quality, live: each suggestion is judged when its session's next click arrives.
        # hit-rate@K = increase(hits{cutoff=K}) / increase(judged); MRR@K = increase(reciprocal_rank{cutoff=K})
        # / increase(judged), over any window, per version.
        self.judged = Counter(
            "nextclick_suggestions_judged",
            "Suggestions judged against their session's next click.",
            VERSION_LABELS,
            registry=r,
        )
        self.hits = Counter(
            "nextclick_suggestion_hits",
            "Judged suggestions whose top `cutoff` items hold the session's next click.",
            (*VERSION_LABELS, "cutoff"),
            registry=r,
        )
        self.reciprocal_rank = Counter(
            "nextclick_suggestion_reciprocal_rank",
            "Sum over judged suggestions of 1 / the next click's position in them (0 beyond `cutoff`).",
            (*VERSION_LABELS, "cutoff"),
            registry=r,
        )
        # Clicks on items a version does not know get the popularity answer (`Suggestion.source`): their share per
        # version, increase(clicks_unknown_item) / increase(clicks_scored), is what an incremental update with the
        # items first seen since the version's cut-off brings down (`training.incremental`).
        self.clicks_scored = Counter(
            "nextclick_clicks_scored",
            "Clicks answered by a version (repeated deliveries included), per model, version and variant.",
            VERSION_LABELS,
            registry=r,
        )
        self.clicks_unknown_item = Counter(
            "nextclick_clicks_unknown_item",
            "Clicks answered by a version that does not know the clicked item: answered from popularity.",
            VERSION_LABELS,
            registry=r,
        )
        self.topped_up = Counter(
            "nextclick_suggestions_topped_up",
            "Suggestions whose model candidates ran dry under the catalogue and the click's rules, topped up with "
            "popular items (source `model+popularity`).",
            VERSION_LABELS,
            registry=r,
        )
        self.offline_recall = Gauge(
            "nextclick_model_offline_recall",
            "The served version's Recall@cutoff measured by training on its test clicks, through the "
            "serving path with the exclusion policy in use (metrics.json's `served`).",
            (*VERSION_LABELS, "cutoff"),
            registry=r,
        )
        self.offline_mrr = Gauge(
            "nextclick_model_offline_mrr",
            "The served version's MRR@cutoff measured like nextclick_model_offline_recall.",
            (*VERSION_LABELS, "cutoff"),
            registry=r,
        )
        self.live_quality_min_share = Gauge(
            "nextclick_live_quality_min_share",
            "NEXTCLICK_LIVE_QUALITY_MIN_SHARE: the least share of its offline Recall@20 that a version's "
            "live hit-rate@20 may fall to before the NextclickLiveQualityLow alert fires.",
            registry=r,
        )
        self.model_swaps = Counter(
            "nextclick_model_swaps",
            "Attempts to serve a new artifact version (the first one included): success, or refused "
            "(corrupt, partial or incompatible; the model served before keeps serving).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("success", "refused"):
            self.model_swaps.labels(outcome=outcome)  # both series exist from the start, for alerts
        self.model_created = Gauge(
            "nextclick_model_created_timestamp_seconds",
            "Creation time of the served artifact (its manifest's created_at), Unix seconds.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "nextclick_consumer_lag",
            "Clicks not yet processed on an owned partition: log end offset minus committed offset.",
            ["topic", "partition"],
            registry=r,
        )
        self.ready = Gauge("nextclick_ready", "1 while every /readyz check passes, else 0.", registry=r)
        self.broker_faults = Counter(
            "nextclick_broker_faults",
            "Broker faults the worker noticed, counted when each starts: `unreachable` (no metadata answer for "
            "NEXTCLICK_BROKER_READY_GRACE seconds) or `topics_missing` (a topic of the worker is gone or has "
            "another partition count: serving stops).",
            ["fault"],
            registry=r,
        )
        for fault in ("unreachable", "topics_missing"):  # stream_app.worker.broker_watch.BROKER_FAULTS
            self.broker_faults.labels(fault=fault)

        # The vsknn pipeline's session index (stream_app.worker.clicks_reader)
        self.knn_sessions = Gauge(
            "nextclick_knn_sessions", "Sessions in the worker's session index (the vsknn pipeline).", registry=r
        )

        # The catalogue topic (stream_app.worker.catalogue_reader)
        self.catalogue_items = Gauge(
            "nextclick_catalogue_items", "Items with a record in the worker's catalogue.", registry=r
        )
        self.catalogue_propagation = Histogram(
            "nextclick_catalogue_propagation_seconds",
            "From a catalogue record's timestamp (the producer's) to the worker applying it, once the worker has "
            "read the topic to its end (records stamped within LATENCY_HORIZON of the worker's clock).",
            buckets=PROPAGATION_BUCKETS,
            registry=r,
        )
        self.catalogue_dead_letters = Counter(
            "nextclick_catalogue_dead_letters",
            "Catalogue records sent to the dead-letter topic, by reason (each worker that reads one counts it).",
            ["reason"],
            registry=r,
        )
        for reason in Reason:
            self.catalogue_dead_letters.labels(reason=str(reason))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ActiveSessionCount(faust.Sensor):
    """Keeps nextclick_active_sessions current between the eviction sweeps (which count exactly): one less
    when a session is deleted from `table`. New sessions are counted where the worker writes states
    (`stream_app.worker.app.write_states`, which bypasses faust's table writes); restored sessions come from the
    changelog: the worker counts them after each recovery."""

    def __init__(self, table: faust.types.CollectionT, gauge: Gauge) -> None:
        super().__init__()
        self.table, self.gauge = table, gauge

    def on_table_del(self, table: faust.types.CollectionT, key: object) -> None:
        if table is self.table:
            self.gauge.dec()


def add_web_endpoints(
    app: faust.App,
    metrics: WorkerMetrics,
    readiness_checks: Callable[[], Mapping[str, bool]],
    readiness_reasons: Callable[[], Mapping[str, str]] = dict,
) -> None:
    """Register /metrics, /livez and /readyz on the app's web server; /readyz's body carries `reasons`
    (check -> text) for failing checks that explain themselves."""
    # Read at each scrape, so alerts see the same readiness as Kubernetes' probe.
    metrics.ready.set_function(lambda: float(all(readiness_checks().values())))

    @app.page("/metrics")
    async def metrics_view(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        # As a header: aiohttp refuses a charset inside `content_type`, and Prometheus wants one.
        return view.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/livez")
    async def liveness_view(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return view.json({"alive": True})

    @app.page("/readyz")
    async def readiness_view(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        checks = dict(readiness_checks())
        ready = all(checks.values())
        body: dict[str, object] = {"ready": ready, "checks": checks}
        if reasons := {name: text for name, text in readiness_reasons().items() if not checks.get(name, True)}:
            body["reasons"] = reasons
        return view.json(body, status=200 if ready else 503)
