"""Offline checks of the monitoring deployment: the Grafana dashboard, the alert rules, the scrape targets.

The dashboard is loaded with Grafana's own Python SDK (grafana-foundation-sdk): every key must survive
its model's round trip, so a misspelt or misplaced field fails. Prometheus's own checker (promtool) is a
Go binary that PyPI does not ship, so the rule file is checked for the rule-file format's structure here
and every PromQL expression (rules and panels alike) is parsed with promql-parser (the Rust parser used
by GreptimeDB and others); every metric named must be one Shoal exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from shoal import _metrics
from shoal.shard.metrics import ShardCollector

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "shoal.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
METRICS_PORT = 9100


def _yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


def _exported() -> set[str]:
    """Every series name Shoal exports (counters with _total, histograms with their parts), plus `up`."""
    families = [f for m in vars(_metrics).values() if isinstance(m, MetricWrapperBase) for f in m.describe()]
    names = {"up"} | {f.name for f in ShardCollector().collect()}  # gauges read at scrape time
    for family in families:
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
        else:
            names.add(family.name)
    return names


def _metric_names(expr: str) -> set[str]:
    """The metric names in a parsed PromQL expression (parsing fails the test on a syntax error)."""
    promql = pytest.importorskip("promql_parser")
    # Grafana's $__rate_interval is not PromQL: Grafana replaces it with a duration before querying.
    text = expr.replace("$__rate_interval", "5m")
    promql.parse(text)  # raises ValueError with the parser's message
    words = set(re.findall(r"\b[a-z_:][a-z0-9_:]*\b", re.sub(r'"[^"]*"|\{[^}]*\}|\[[^]]*\]', "", text)))
    return {w for w in words if w.startswith("shoal_") or w == "up"}


def _panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def _subset(mine: Any, theirs: Any, where: str) -> None:
    """Every key and value of `mine` is in `theirs` (which may add defaults)."""
    if isinstance(mine, dict):
        assert isinstance(theirs, dict), where
        for key, value in mine.items():
            assert key in theirs, f"{where}.{key} is not part of Grafana's dashboard model"
            _subset(value, theirs[key], f"{where}.{key}")
    elif isinstance(mine, list):
        assert isinstance(theirs, list) and len(mine) == len(theirs), where
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            _subset(a, b, f"{where}[{i}]")
    else:
        assert mine == theirs, f"{where}: {mine!r} became {theirs!r}"


def test_dashboard_loads_with_grafanas_model() -> None:
    sdk = pytest.importorskip("grafana_foundation_sdk.models.dashboard")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    doc = json.loads(DASHBOARD.read_text())
    model = sdk.Dashboard.from_json(doc)
    _subset(doc, json.loads(json.dumps(model, cls=JSONEncoder)), "dashboard")
    assert doc["uid"] and doc["title"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_dashboard_queries_parse_and_use_exported_metrics() -> None:
    exported = _exported()
    used: set[str] = set()
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names <= exported, f"{panel['title']}: {names - exported} are not exported"
            used |= names
    # What the issue asks the dashboard to show.
    for needed in (
        "shoal_rpc_requests_total",
        "shoal_rpc_duration_seconds_bucket",
        "shoal_collection_points",
        "shoal_collection_index_memory_bytes",
        "shoal_wal_sync_seconds_bucket",
        "shoal_search_batch_queries_count",
        "shoal_queue_depth",
        "shoal_replica_lag_sequences",
    ):
        assert needed in used, f"the dashboard shows no {needed}"


def test_the_dashboard_datasource_is_provisioned() -> None:
    sources = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    [source] = sources["datasources"]
    assert (source["uid"], source["type"]) == ("prometheus", "prometheus")
    providers = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "shoal.yaml")
    [provider] = providers["providers"]
    compose = _yaml(DEPLOY / "compose.yaml")
    mounts = dict(m.split(":")[:2] for m in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_alert_rules_are_well_formed() -> None:
    doc = _yaml(ALERTS)
    assert set(doc) == {"groups"}
    exported = _exported()
    alerts = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", rule["alert"])
            assert re.fullmatch(r"(\d+[smhdwy])+", rule["for"])
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
            names = _metric_names(rule["expr"])
            assert names and names <= exported, f"{rule['alert']}: {names - exported} are not exported"
            alerts.add(rule["alert"])
    # A shard down, p99 over a threshold, snapshot age too high, a replica out of sync.
    assert alerts == {"ShoalProcessDown", "ShoalSearchLatencyHigh", "ShoalSnapshotTooOld", "ShoalReplicaOutOfSync"}


def test_prometheus_scrapes_every_process_of_the_compose_file() -> None:
    config = _yaml(PROMETHEUS)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    compose = _yaml(DEPLOY / "compose.yaml")
    shoal = {n: s for n, s in compose["services"].items() if n not in {"prometheus", "grafana"}}
    for name, service in shoal.items():
        command = service["command"]
        assert command[command.index("--metrics") + 1] == f"0.0.0.0:{METRICS_PORT}"
        assert f"{name}:{METRICS_PORT}" in targets
    assert len(targets) == len(shoal)
    mounts = [m.split(":")[:2] for m in compose["services"]["prometheus"]["volumes"]]
    assert ["./prometheus/alerts.yml", "/etc/prometheus/alerts.yml"] in mounts


def test_kubernetes_pods_are_annotated_for_scraping() -> None:
    yaml = pytest.importorskip("yaml")
    for name in ("coordinator-deployment.yaml", "shard-statefulset.yaml"):
        [doc] = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]
        template = doc["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(METRICS_PORT)
        [container] = template["spec"]["containers"]
        assert container["args"][container["args"].index("--metrics") + 1] == f"0.0.0.0:{METRICS_PORT}"
        assert {"name": "metrics", "containerPort": METRICS_PORT} in container["ports"]
