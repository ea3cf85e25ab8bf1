"""deploy/: the Grafana dashboard and the Prometheus alert rules query only
metrics their processes really export (a live `attimo serve`, a live
`attimo scheduler`, the worker's registry), the rules file has the shape
Prometheus loads (and promtool accepts it and its unit tests, where promtool is
installed), and the thresholds are the console's."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from engine.latency import THRESHOLDS
from engine.testing.processes import REPO_ROOT, ServerProcess

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "attimo.json"
RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.test.yml"
METRIC = re.compile(r"\b(attimo_[a-z0-9_]+)\b")
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def dashboard_exprs() -> list[str]:
    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr":
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    return list(walk(json.loads(DASHBOARD.read_text())))


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def exported_names(exposition: str) -> set[str]:
    """The sample names a text exposition can carry, from its # TYPE lines (a
    labelled metric without children yet has no samples, only its TYPE)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif kind == "counter":
            names |= {name if name.endswith("_total") else f"{name}_total"}
        else:
            names.add(name)
    return names


class StandaloneScheduler(ServerProcess):
    """`attimo scheduler` with its metrics port: ready once /metrics answers."""

    name = "scheduler"

    def __init__(self, redis_url: str):
        super().__init__()
        self.env.update({"ATTIMO_REDIS_URL": redis_url, "ATTIMO_SCHEDULER_METRICS_PORT": str(self.port),
                         "ATTIMO_KEY_PREFIX": "deploytest"})

    def command(self) -> list[str]:
        return [sys.executable, "-m", "engine.cli", "scheduler"]

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False


@pytest.fixture(scope="module")
def exported(api, redis_server) -> dict[str, set[str]]:
    """What each process exports: its owner's prefix -> names."""
    with api.client() as client:
        serve = client.get("/metrics").text
    with StandaloneScheduler(redis_server.url) as scheduler:
        standalone = httpx.get(f"http://127.0.0.1:{scheduler.port}/metrics").text
    import engine.stream.worker  # noqa: F401 - registers the worker's metrics, as `attimo worker` does

    return {"attimo_worker_": exported_names(generate_latest(REGISTRY).decode()),
            "attimo_scheduler_": exported_names(standalone), "attimo_": exported_names(serve)}


def owner(name: str, exported: dict[str, set[str]]) -> set[str]:
    return next(names for prefix, names in exported.items() if name.startswith(prefix))


def test_every_metric_the_dashboard_and_the_rules_query_is_exported_by_its_process(exported):
    queried = {name for expr in dashboard_exprs() + [rule["expr"] for rule in rules()]
               for name in METRIC.findall(expr)}
    assert {"attimo_request_seconds_bucket", "attimo_worker_consumer_lag_records",
            "attimo_scheduler_lateness_seconds_bucket", "attimo_scheduler_dead_lettered_total"} <= queried
    missing = sorted(name for name in queried if name not in owner(name, exported))
    assert missing == []
    # An embedded scheduler's are in attimo serve's own /metrics too.
    assert {n for n in queried if n.startswith("attimo_scheduler_")} <= exported["attimo_"]


def test_the_name_check_catches_a_metric_nobody_exports(exported):
    assert "attimo_request_seconds_bucket" in owner("attimo_request_seconds_bucket", exported)
    assert "attimo_request_latency_bucket" not in owner("attimo_request_latency_bucket", exported)
    assert "attimo_worker_consumer_lag_records" not in exported["attimo_"]  # the worker's, not the API's


def test_the_rules_file_has_the_shape_prometheus_loads_and_promtool_accepts_it():
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    names = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group.get("name")
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"Attimo[A-Za-z0-9]+", rule["alert"])
            assert isinstance(rule["expr"], str) and METRIC.search(rule["expr"])
            assert "for" not in rule or DURATION.match(rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in ("page", "warn")
            assert {"summary", "description"} <= set(rule["annotations"])
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    promtool = shutil.which("promtool")
    if promtool is not None:  # the Debian package prometheus ships it
        for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
            done = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=RULES.parent)
            assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_and_the_dashboard_cross_the_console_thresholds():
    threshold = {rule["alert"]: float(rule["expr"].rpartition(">")[2]) for rule in rules()}
    assert threshold["AttimoDecideP99High"] == THRESHOLDS["decide_p99_ms"] / 1000
    assert threshold["AttimoDecideFallbacks"] == THRESHOLDS["fallbacks_per_s"]
    assert threshold["AttimoRedisErrors"] == THRESHOLDS["redis_errors_per_s"]
    assert threshold["AttimoKafkaLag"] == THRESHOLDS["kafka_lag_records"]
    assert threshold["AttimoSchedulerLate"] == THRESHOLDS["due_lateness_ms"] / 1000
    panels = {panel["title"]: panel for panel in json.loads(DASHBOARD.read_text())["panels"]}
    steps = panels["Decide latency"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == THRESHOLDS["decide_p99_ms"] / 1000
