"""The worker's metrics as Prometheus sees them, with a real broker, worker and Prometheus.

promtool lints a running worker's /metrics; every metric the dashboard and the alert rules query is
one the worker exports; the consumer-lag and readiness gauges follow what the worker does; and a
real Prometheus (Debian's package) scraping a worker on loopback loads the alert rules and answers
the dashboard's queries, the p99 latency one with a number.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devtools.click_replay import held_out_clicks
from devtools.embedded_broker import EmbeddedBroker, free_port
from tests.deploy_tools import dashboard_queries, metric_names, required_binary, rule_queries, write_rule_file

pytestmark = pytest.mark.broker

P99_LATENCY = dashboard_queries()[("Click-to-suggestion latency percentiles", "p99")]
SCRAPE_JOB = "nextclick-worker"  # the job label a ServiceMonitor gives: the Service's name (k8s/worker.yaml)
HISTOGRAM_SAMPLES = ("_bucket", "_sum", "_count")


def click_messages(settings: Any, count: int) -> list[tuple[bytes, bytes]]:
    """The test day's first real clicks, stamped now (latency runs from a click's own timestamp)."""
    return [
        (
            click.session_id.encode(),
            json.dumps(
                {"session_id": click.session_id, "item_id": click.item_id, "timestamp": time.time()}
            ).encode(),
        )
        for click in held_out_clicks(settings, count)
    ]


def sample_values(worker: Any, name: str) -> list[float]:
    """Every sample called `name` on the worker's /metrics, whatever its labels."""
    text = worker.get("/metrics")[1].decode()
    return [
        s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name
    ]


@pytest.fixture(scope="module")
def worker(artifact: Path, start_worker: Callable[..., Any]) -> Iterator[Any]:
    with start_worker("observed-worker", require_model=True, serving_artifact_dir=artifact) as running:
        yield running


class Prometheus:
    """A Prometheus server's HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        """The `data` of an API answer; a refused query raises with Prometheus' own error."""
        try:
            with urllib.request.urlopen(
                f"{self.url}{path}?{urllib.parse.urlencode(params)}", timeout=5
            ) as reply:
                answer = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]

    def rules(self) -> dict[str, dict[str, Any]]:
        """The loaded rules by name, with their health and (alerts) state."""
        return {
            rule["name"]: rule for group in self.get("/api/v1/rules")["groups"] for rule in group["rules"]
        }


def poll(fetch: Callable[[], Any], condition: Callable[[Any], bool], timeout: float, what: str) -> Any:
    """`fetch()` again every half second until its value meets `condition`; that value."""
    deadline = time.monotonic() + timeout
    while not condition(value := fetch()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s: {value}")
        time.sleep(0.5)
    return value


@pytest.fixture(scope="module")
def prometheus(worker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus on loopback scraping the worker every second, with the alert rules loaded."""
    binary = required_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(write_rule_file(tmp / "rules.yaml"))],
        "scrape_configs": [
            {
                "job_name": SCRAPE_JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{worker.settings.web_port}"]}],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}")

    def scraped_the_worker() -> bool:
        assert process.poll() is None, (tmp / "prometheus.log").read_text()
        try:
            return bool(server.query(f'up{{job="{SCRAPE_JOB}"}} == 1'))
        except OSError:  # not listening yet
            return False

    try:
        poll(scraped_the_worker, bool, timeout=30, what="scrape of the worker")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_promtool_accepts_the_workers_metrics(worker: Any) -> None:
    promtool = required_binary("promtool")
    status, body = worker.get("/metrics")
    lint = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, check=False)
    assert status == 200 and lint.returncode == 0 and not lint.stdout + lint.stderr, lint.stdout + lint.stderr


def test_every_metric_queried_is_one_the_worker_or_the_follower_exports(worker: Any) -> None:
    """Read from the `# TYPE` lines, so that labelled series nothing has incremented yet count too."""
    from training.follow import FollowerMetrics

    registry = CollectorRegistry()
    FollowerMetrics(registry)
    exposition = worker.get("/metrics")[1].decode() + generate_latest(registry).decode()
    declared = dict(line.split()[2:4] for line in exposition.splitlines() if line.startswith("# TYPE "))
    exported = set(declared) | {
        name + suffix
        for name, kind in declared.items()
        if kind == "histogram"
        for suffix in HISTOGRAM_SAMPLES
    }
    queried = metric_names([*dashboard_queries().values(), *rule_queries().values()])
    assert queried and queried <= exported, queried - exported


def test_consumer_lag_and_readiness_follow_the_worker(
    broker: EmbeddedBroker,
    artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Clicks wait while no model is there (lag = their count, not ready), then are served (lag 0, ready)."""
    served = tmp_path / "served"  # the artifact shows up here only later
    fields = worker_fields(
        broker.bootstrap_servers, tmp_path, serving_artifact_dir=served, consumer_lag_interval=0.3
    )
    with launch_worker(fields, tmp_path / "worker.log") as worker:
        messages = click_messages(worker.settings, 8)
        worker.produce(worker.settings.clicks_topic, messages)
        worker.wait_until(
            lambda: sum(sample_values(worker, "nextclick_consumer_lag")) == len(messages),
            what="a lag of every click sent",
        )
        assert sample_values(worker, "nextclick_ready") == [0.0]

        served.symlink_to(artifact)
        worker.wait_until(lambda: sample_values(worker, "nextclick_ready") == [1.0], what="readiness")
        worker.wait_until(
            lambda: sample_values(worker, "nextclick_consumer_lag") == [0.0] * worker.settings.partitions,
            what="the lag back to zero on every partition",
        )
        assert worker.metric("nextclick_suggestions_published_total") == len(messages)


def test_prometheus_answers_the_dashboards_p99_latency_query(worker: Any, prometheus: Prometheus) -> None:
    messages = click_messages(worker.settings, 40)
    worker.produce(worker.settings.clicks_topic, messages)
    assert len(worker.consume(worker.settings.recommendations_topic, len(messages))) == len(messages)
    [series] = poll(
        lambda: prometheus.query(P99_LATENCY),
        lambda result: bool(result) and math.isfinite(float(result[0]["value"][1])),
        timeout=30,
        what="p99 latency",
    )
    assert float(series["value"][1]) > 0


def test_prometheus_runs_every_dashboard_query_and_alert_rule(worker: Any, prometheus: Prometheus) -> None:
    for expr in dashboard_queries().values():
        prometheus.query(expr)  # raises with Prometheus' error for a query it refuses

    def settled(rules: dict[str, dict[str, Any]]) -> bool:
        """Every rule loaded and evaluated (never evaluated: year 1), the ready worker seen by the alert."""
        return (
            set(rules) == set(rule_queries())
            and not any(rule["lastEvaluation"].startswith("0001") for rule in rules.values())
            and rules["NextclickNoReadyWorker"]["state"] == "inactive"
        )

    rules = poll(prometheus.rules, settled, timeout=15, what="evaluation of every rule")
    assert all(rule["health"] == "ok" and not rule.get("lastError") for rule in rules.values()), rules
