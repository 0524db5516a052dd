"""Metric names follow Prometheus conventions, every worker counts in its own registry, and a batch's clicks on
items its version does not know are counted per version."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.inference.events import Click, Reason
from stream_app.inference.partitioning import partition_for_key
from stream_app.inference.sessions import BatchResult
from stream_app.inference.suggestion import SourcedClick, Suggestion
from stream_app.settings import REPO_ROOT, Settings
from stream_app.worker.canary import canary_position
from stream_app.worker.live_quality import LiveQuality
from stream_app.worker.metrics import ERROR_STAGES, WorkerMetrics
from stream_app.worker.model_swap import ServedModel

EXPECTED = {
    "nextclick_events_consumed": "counter",
    "nextclick_suggestions_published": "counter",
    "nextclick_dead_letters": "counter",
    "nextclick_errors": "counter",
    "nextclick_end_to_end_latency_seconds": "histogram",
    "nextclick_inference_latency_seconds": "histogram",
    "nextclick_batch_size": "histogram",
    "nextclick_active_sessions": "gauge",
    "nextclick_model_info": "gauge",  # an Info, as the Prometheus text format writes it
    "nextclick_model_swaps": "counter",
    "nextclick_model_created_timestamp_seconds": "gauge",
    "nextclick_suggestions_judged": "counter",
    "nextclick_suggestion_hits": "counter",
    "nextclick_suggestion_reciprocal_rank": "counter",
    "nextclick_clicks_scored": "counter",
    "nextclick_clicks_unknown_item": "counter",
    "nextclick_model_offline_recall": "gauge",
    "nextclick_model_offline_mrr": "gauge",
    "nextclick_live_quality_min_share": "gauge",
    "nextclick_broker_faults": "counter",
}


def families(metrics: WorkerMetrics) -> dict[str, str]:
    return {
        family.name: family.type for family in text_string_to_metric_families(metrics.exposition().decode())
    }


def test_all_metrics_are_exposed_with_their_types() -> None:
    metrics = WorkerMetrics()
    info = {"name": "gru4rec", "artifact_version": "v1", "provider": "CPU", "exclude_seen": "true"}
    metrics.model.labels(variant="current").info(info)  # an Info shows once set
    assert EXPECTED.items() <= families(metrics).items()


def test_two_workers_do_not_share_counters() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.dead_letters.labels(reason="bad_json").inc()
    assert first.registry.get_sample_value("nextclick_dead_letters_total", {"reason": "bad_json"}) == 1
    assert second.registry.get_sample_value("nextclick_dead_letters_total", {"reason": "bad_json"}) == 0


def test_both_model_swap_outcomes_are_exported_before_any_swap() -> None:
    """Alerts on refused swaps need the series to exist (at 0) from the start."""
    registry = WorkerMetrics().registry
    for outcome in ("success", "refused"):
        assert registry.get_sample_value("nextclick_model_swaps_total", {"outcome": outcome}) == 0


def test_every_refusal_reason_and_error_stage_is_exported_before_any() -> None:
    registry = WorkerMetrics().registry
    for reason in Reason:
        assert registry.get_sample_value("nextclick_dead_letters_total", {"reason": str(reason)}) == 0
    for stage in ERROR_STAGES:
        assert registry.get_sample_value("nextclick_errors_total", {"stage": stage}) == 0


def test_the_code_counts_errors_only_under_known_stages() -> None:
    counted = {
        stage
        for path in (REPO_ROOT / "stream_app").rglob("*.py")
        for stage in re.findall(r'errors\.labels\(stage="(\w+)"\)', path.read_text())
    }
    assert counted and counted <= set(ERROR_STAGES)


def test_a_version_exports_its_unknown_item_share_from_the_start() -> None:
    """The share's series exist (at 0) as soon as a version serves: the dashboard needs no click first."""
    metrics = WorkerMetrics()
    version = SimpleNamespace(name="gru4rec", version="v1", offline_figures=lambda exclude_seen: None)
    LiveQuality(metrics, top_k=20).start(version, "current", exclude_seen=True)  # type: ignore[arg-type]
    labels = {"model": "gru4rec", "artifact_version": "v1", "variant": "current"}
    for name in ("nextclick_clicks_scored_total", "nextclick_clicks_unknown_item_total"):
        assert metrics.registry.get_sample_value(name, labels) == 0


@dataclass
class KnownItems:
    """A stand-in for a served version: it answers from the model exactly the clicks on `known` items."""

    version: str
    variant: str
    known: set[str]

    def recommend(self, clicks: list[SourcedClick], table: Mapping, now: float) -> BatchResult:
        suggestions = [
            Suggestion(sourced, [], [], "model" if sourced.click.item_id in self.known else "popularity",
                       "gru4rec", self.version, self.variant)
            for sourced in clicks
        ]
        return BatchResult(suggestions, {}, [])


def test_a_batch_counts_the_clicks_on_items_unknown_to_their_version() -> None:
    metrics = WorkerMetrics()
    served = ServedModel(Settings(), metrics, asyncio.Event())
    served.recommender = KnownItems("v1", "current", {"a"})  # type: ignore[assignment]
    served.canary = (KnownItems("v2", "canary", {"a", "new"}), 0.5)  # type: ignore[assignment]
    sessions = [f"s{number}" for number in range(40)]
    on_canary = {session for session in sessions if canary_position(session) < 0.5}
    assert 0 < len(on_canary) < len(sessions)
    items = ["a", "new", "gone"]  # known to both, known to v2 only, known to neither
    clicks = [
        SourcedClick(Click(session, items[number % 3], 1.0), partition=0, offset=number)
        for number, session in enumerate(sessions)
    ]
    for _ in range(2):  # two batches add up
        result = served.recommend(clicks, {}, now=1.0)
        assert len(result.suggestions) == len(clicks)
    expected: dict[tuple[str, str], list[int]] = {("v1", "current"): [0, 0], ("v2", "canary"): [0, 0]}
    for sourced in clicks:
        canary = sourced.click.session_id in on_canary
        counts = expected[("v2", "canary") if canary else ("v1", "current")]
        counts[0] += 2  # two batches
        counts[1] += 2 * (sourced.click.item_id not in ({"a", "new"} if canary else {"a"}))
    for (version, variant), (scored, unknown) in expected.items():
        labels = {"model": "gru4rec", "artifact_version": version, "variant": variant}
        assert metrics.registry.get_sample_value("nextclick_clicks_scored_total", labels) == scored > 0
        assert metrics.registry.get_sample_value("nextclick_clicks_unknown_item_total", labels) == unknown > 0


@pytest.mark.broker
def test_a_fresh_worker_counts_its_sessions_before_the_first_eviction_sweep(
    start_worker: Any, artifact: Path
) -> None:
    with start_worker("fresh-metrics", require_model=True, serving_artifact_dir=artifact) as worker:
        assert worker.metric("nextclick_active_sessions") == 0
        sessions = ["fresh-a", "fresh-b", "fresh-c"]
        for number, session in enumerate(sessions * 2):  # a second click of a session adds no session
            value = json.dumps({"session_id": session, "item_id": "214821371", "timestamp": 1.0e9 + number})
            key = session.encode()
            worker.produce(worker.settings.clicks_topic, [(key, value.encode())],
                           partition_for_key(key, worker.settings.partitions))
        worker.consume(worker.settings.recommendations_topic, 2 * len(sessions))
        assert worker.metric("nextclick_active_sessions") == len(sessions)  # eviction sweeps every 60 s
        assert worker.metric("nextclick_errors_total", stage="score") == 0
