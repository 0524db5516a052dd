"""Metric names follow Prometheus conventions, and every worker counts in its own registry."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from stream_app.metrics import WorkerMetrics

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
    assert second.registry.get_sample_value("nextclick_dead_letters_total", {"reason": "bad_json"}) is None


def test_both_model_swap_outcomes_are_exported_before_any_swap() -> None:
    """Alerts on refused swaps need the series to exist (at 0) from the start."""
    registry = WorkerMetrics().registry
    for outcome in ("success", "refused"):
        assert registry.get_sample_value("nextclick_model_swaps_total", {"outcome": outcome}) == 0
