"""The compose `monitoring` profile: the Grafana dashboard, its provisioning and Prometheus's
scrape config, checked against the running app. Every metric a dashboard expression names must
appear in a live `/metrics` scrape of the app after it scored a request, so a renamed or
removed metric fails here instead of leaving an empty panel."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from scribe_service.app import create_app
from scribe_service.settings import Settings
from support import (
    FakeEmbedder,
    FakeJudge,
    compose_command,
    free_port,
    uvicorn_in_thread,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "docker" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "scribe-dashboard.json"
PROVISIONING = MONITORING / "grafana" / "provisioning"
PROMETHEUS = MONITORING / "prometheus.yml"
COMPOSE = ROOT / "docker" / "compose.yaml"

# What the issue asks the dashboard to show, each as a metric that must back some panel.
REQUIRED = {
    "request rate and status": "scribe_requests_total",
    "latency per stage": "scribe_stage_seconds_bucket",
    "judge calls by outcome": "scribe_judge_calls_total",
    "queue": "scribe_pending_trajectories",
    "fallback rate": "scribe_fallback_routes_total",
    "cache hits": "scribe_judgment_cache_total",
}

# Grafana's own variables, replaced by what Grafana would put there before Prometheus parses.
_RANGE_VARIABLE = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__\w+)\}")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)")


def _load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def _expressions(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", [])]


def metric_names(expression: str) -> set[str]:
    """The metric names a Grafana PromQL expression selects, by Prometheus's own grammar (a
    syntax error raises)."""
    text = _RANGE_VARIABLE.sub("5m", expression)
    text = _VARIABLE.sub(".*", text)  # dashboard variables stand only in regex matchers here
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            names.update(
                m.value for m in node.matchers.matchers if m.name == "__name__" and m.value
            )

    promql_parser.walk(promql_parser.parse(text), visit)
    return names


def unexported(expression: str, exported: set[str]) -> set[str]:
    """The metrics `expression` selects that the scrape lacks. An expression that selects no
    metric at all is an error: a check over it would pass having checked nothing."""
    names = metric_names(expression)
    assert names, f"{expression} selects no metric"
    return names - exported


def _scrape(text: str) -> set[str]:
    """Sample names in an exposition (`scribe_requests_total`, `…_bucket`), as Prometheus
    stores them."""
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


@pytest.fixture
def exported(tmp_path: Path) -> set[str]:
    """What a live app exports after scoring: the real app and pipeline, the embedder and judge
    faked, the score log on (its counter exists only then)."""
    folder = tmp_path
    settings = Settings(
        prototypes_dir=ROOT / "prototypes",
        cache_dir=folder / "cache",
        score_log=folder / "scores.jsonl",
    )
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())
    with TestClient(app) as client:
        trajectory = {"completion": "Step 1: 3*4 = 12.\nStep 2: So the answer is 12."}
        for _ in range(2):  # the second is served from the judgment cache
            assert client.post("/v1/score", json=trajectory).status_code == 200
        response = client.get("/metrics")
    assert response.status_code == 200
    return _scrape(response.text)


# --- the extraction itself: it must find names, or the checks below check nothing --------


def test_metric_names_follow_the_promql_grammar() -> None:
    expression = (
        "histogram_quantile(0.95, sum by (le, stage) ("
        'rate(scribe_stage_seconds_bucket{instance=~"$instance"}[$__rate_interval])))'
        " / on () group_left sum(scribe_pending_trajectories)"
        ' + count({__name__="scribe_steps_total"})'
    )
    assert metric_names(expression) == {
        "scribe_stage_seconds_bucket",
        "scribe_pending_trajectories",
        "scribe_steps_total",
    }
    # Label names, function names, grouping labels and variables are not metrics.
    assert metric_names('sum by (route) (rate(x_total{route="le"}[5m]))') == {"x_total"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(scribe_requests_total[5m])")


def test_a_missing_metric_is_caught(exported: set[str]) -> None:
    typo = 'sum(rate(scribe_requests_totl{instance=~"$instance"}[$__rate_interval]))'
    assert unexported(typo, exported) == {"scribe_requests_totl"}
    assert unexported(typo.replace("totl", "total"), exported) == set()
    with pytest.raises(AssertionError, match="selects no metric"):
        unexported("vector(1)", exported)


# --- the dashboard -------------------------------------------------------------------------


def test_dashboard_is_grafana_json_over_a_prometheus_datasource() -> None:
    dashboard = _load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(_panels(dashboard))
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids)


def test_every_panel_selects_metrics_the_service_exports(exported: set[str]) -> None:
    checked = 0
    for panel in _panels(_load_dashboard()):
        for expression in _expressions(panel):
            missing = unexported(expression, exported)
            assert not missing, f"{panel['title']!r} names metrics /metrics lacks: {missing}"
            checked += 1
    assert checked >= 15


def test_variables_query_exported_metrics(exported: set[str]) -> None:
    queries = [
        v["definition"] for v in _load_dashboard()["templating"]["list"] if v["type"] == "query"
    ]
    assert queries
    for query in queries:
        names = set(_LABEL_VALUES.findall(query))
        assert names and names <= exported, query


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    used = {
        name
        for panel in _panels(_load_dashboard())
        for expression in _expressions(panel)
        for name in metric_names(expression)
    }
    for what, metric in REQUIRED.items():
        assert metric in used, f"no panel shows {what} ({metric})"


# --- provisioning and Prometheus ----------------------------------------------------------


def _yaml(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def test_prometheus_scrapes_the_service_metrics_with_its_key() -> None:
    config = _yaml(PROMETHEUS)
    [job] = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    [static] = job["static_configs"]
    assert static["targets"] == ["scribe:8000"]
    # The service's port, as the compose file maps it.
    scribe = _yaml(COMPOSE)["services"]["scribe"]
    assert any(str(p).endswith(":8000") for p in scribe["ports"])
    # /metrics is behind SCRIBE_API_KEY: the key comes from the compose secret's file.
    assert job["authorization"]["type"] == "Bearer"
    secret = job["authorization"]["credentials_file"]
    compose = _yaml(COMPOSE)
    assert secret == "/run/secrets/scribe_api_key"
    assert compose["secrets"]["scribe_api_key"] == {"environment": "SCRIBE_API_KEY"}
    assert "scribe_api_key" in compose["services"]["prometheus"]["secrets"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    [source] = _yaml(PROVISIONING / "datasources" / "prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    assert source["url"] == "http://prometheus:9090"
    [provider] = _yaml(PROVISIONING / "dashboards" / "scribe.yaml")["providers"]
    grafana = _yaml(COMPOSE)["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}  # source:target[:ro]
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    target = mounts["./monitoring/grafana/scribe-dashboard.json"]
    assert Path(target).parent == Path(provider["options"]["path"])
    assert (COMPOSE.parent / "monitoring/grafana/scribe-dashboard.json").resolve() == DASHBOARD


def test_monitoring_profile_is_off_by_default() -> None:
    services = _yaml(COMPOSE)["services"]
    for name, image in (("prometheus", "prom/prometheus:"), ("grafana", "grafana/grafana:")):
        assert services[name]["profiles"] == ["monitoring"]
        assert services[name]["image"].startswith(image)
        # Published on loopback unless the operator says otherwise.
        assert all("127.0.0.1" in str(p) for p in services[name]["ports"])
    for name in ("judge", "scribe"):
        assert "profiles" not in services[name]


@pytest.mark.parametrize("profiles", [[], ["--profile", "monitoring"]], ids=["plain", "monitoring"])
def test_compose_config_validates_with_the_profile(profiles: list[str]) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SCRIBE_", "COMPOSE_"))}
    env = {**clean, "SCRIBE_API_KEY": "k", "SCRIBE_JUDGE_MODEL": "Qwen/Qwen2.5-7B-Instruct"}
    result = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE), *profiles, "config", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    expected = {"judge", "scribe"} | ({"prometheus", "grafana"} if profiles else set())
    assert set(config["services"]) == expected
    if profiles:
        mounted = {v["source"] for v in config["services"]["prometheus"]["volumes"]}
        assert str(PROMETHEUS) in mounted
        assert config["services"]["prometheus"]["secrets"] == [
            {"source": "scribe_api_key", "target": "/run/secrets/scribe_api_key"}
        ]


# --- a real Prometheus -------------------------------------------------------------------------


def _prometheus() -> str:
    found = shutil.which("prometheus")
    if found is None:
        message = "Prometheus not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the dashboard's queries")
        pytest.skip(message)
    return found


def _query(api: str, expression: str) -> list[Any]:
    answer = httpx.get(f"{api}/query", params={"query": expression}, timeout=10).json()
    assert answer["status"] == "success", f"{expression}: {answer}"
    result: list[Any] = answer["data"]["result"]
    return result


def test_prometheus_scrapes_the_app_and_answers_every_panel(tmp_path: Path) -> None:
    """docker/monitoring/prometheus.yml, pointed at a real uvicorn serving the app with an API
    key, in a real Prometheus: the scrape succeeds with the key, and every dashboard query
    parses and returns series."""
    binary = _prometheus()
    settings = Settings(
        prototypes_dir=ROOT / "prototypes",
        cache_dir=tmp_path / "cache",
        score_log=tmp_path / "scores.jsonl",
        api_key="k3y",
    )
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())
    (tmp_path / "key").write_text("k3y", encoding="utf-8")
    config = _yaml(PROMETHEUS)
    config["global"]["scrape_interval"] = "1s"
    [job] = config["scrape_configs"]
    job["authorization"]["credentials_file"] = str(tmp_path / "key")
    port = free_port()
    log = tmp_path / "prometheus.log"
    with uvicorn_in_thread(app) as base, log.open("wb") as log_file:
        job["static_configs"] = [{"targets": [base.removeprefix("http://")]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            api = f"http://127.0.0.1:{port}/api/v1"
            wait_for(f"http://127.0.0.1:{port}/-/ready", server, timeout=60)
            headers = {"Authorization": "Bearer k3y"}
            trajectory = {"completion": "Step 1: 3*4 = 12.\nStep 2: So the answer is 12."}
            # Spread over several scrapes: a rate needs two samples of a counter that moved.
            for _ in range(6):
                response = httpx.post(f"{base}/v1/score", json=trajectory, headers=headers)
                assert response.status_code == 200
                time.sleep(0.5)
            deadline = time.monotonic() + 30
            while not _query(api, 'scribe_steps_total{status="ok"} >= 12'):
                assert time.monotonic() < deadline, "Prometheus never scraped the app"
                time.sleep(0.5)
            [target] = httpx.get(f"{api}/targets", timeout=10).json()["data"]["activeTargets"]
            assert target["health"] == "up" and target["scrapeUrl"].endswith("/metrics")
            time.sleep(2)  # a couple more samples after the last request
            for panel in _panels(_load_dashboard()):
                for expression in _expressions(panel):
                    query = expression.replace("$__rate_interval", "15s").replace("$instance", ".*")
                    assert _query(api, query), f"{panel['title']!r}: no series for {query}"
        finally:
            server.terminate()
            server.wait(timeout=30)
