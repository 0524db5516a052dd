"""Metric names follow Prometheus conventions, and every worker counts in its own registry."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.inference.events import Reason
from stream_app.inference.partitioning import partition_for_key
from stream_app.settings import REPO_ROOT
from stream_app.worker.metrics import ERROR_STAGES, WorkerMetrics

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
    "nextclick_model_offline_recall": "gauge",
    "nextclick_model_offline_mrr": "gauge",
    "nextclick_live_quality_min_share": "gauge",
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
