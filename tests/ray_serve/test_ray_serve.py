"""scribe_service.ray_serve without Ray: the Serve options it derives from its arguments, and
the replica's identity on responses and metrics. Fast; the main venv (no Ray installed)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from scribe_service.app import create_app
from scribe_service.ray_serve import (
    ReplicaIdentity,
    ServeArgsError,
    deployment_options,
    label_samples,
    serve_options,
)
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, FakeJudge


def test_defaults_follow_the_service_settings_not_serves() -> None:
    settings = Settings()
    options = serve_options({}, {})
    # Serve's own defaults (5 ongoing, target 2, 20 s drain) would throttle and cut short.
    assert options.max_ongoing_requests == settings.max_pending
    assert options.target_ongoing_requests == settings.judge_concurrency
    assert options.graceful_shutdown_timeout_s > settings.shutdown_grace
    assert options.environment == {}


def test_settings_come_from_the_arguments_else_the_environment() -> None:
    environ = {"SCRIBE_SHUTDOWN_GRACE": "90", "SCRIBE_MAX_PENDING": "64"}
    options = serve_options({"shutdown_grace": "30", "judge_url": "http://j:1/v1"}, environ)
    assert options.graceful_shutdown_timeout_s > 30
    assert options.graceful_shutdown_timeout_s < 90
    assert options.max_ongoing_requests == 64
    assert options.environment == {
        "SCRIBE_SHUTDOWN_GRACE": "30",
        "SCRIBE_JUDGE_URL": "http://j:1/v1",
    }


def test_yaml_numbers_are_read_as_text() -> None:
    options = serve_options({"num_replicas": 3, "judge_concurrency": 16}, {})
    assert options.num_replicas == 3
    assert options.target_ongoing_requests == 16
    assert options.environment == {"SCRIBE_JUDGE_CONCURRENCY": "16"}


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ({"judge_ulr": "http://j/v1"}, "judge_ulr"),
        ({"num_replicas": "two"}, "num_replicas"),
        ({"num_cpus": "-1"}, "num_cpus"),
        ({"max_ongoing_requests": "0"}, "max_ongoing_requests"),
        ({"max_replicas": "4"}, "min_replicas"),
        ({"min_replicas": "4", "max_replicas": "2"}, "max_replicas"),
    ],
    ids=["typo", "not-a-number", "negative", "zero", "half-autoscaling", "max-below-min"],
)
def test_bad_arguments_are_refused_by_name(args: dict[str, str], names: str) -> None:
    with pytest.raises(ServeArgsError, match=names):
        serve_options(args, {})


def test_deployment_options_fixed_or_autoscaled() -> None:
    fixed = deployment_options(serve_options({"num_replicas": "3", "api_key": "k"}, {}))
    assert fixed["num_replicas"] == 3
    assert "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"]["runtime_env"] == {"env_vars": {"SCRIBE_API_KEY": "k"}}
    scaled = deployment_options(
        serve_options({"min_replicas": "1", "max_replicas": "5", "judge_concurrency": "12"}, {})
    )
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 5,
        "target_ongoing_requests": 12.0,
    }


def test_label_samples_labels_every_sample_and_keeps_the_rest() -> None:
    exposition = (
        "# HELP a_total A.\n# TYPE a_total counter\na_total 3.0\n"
        'b{route="/v1/score",status="200"} 1.0\nc{} 2.0\n'
    )
    labelled = label_samples(exposition, "replica", 'r"1')
    samples = [s for f in text_string_to_metric_families(labelled) for s in f.samples]
    assert [(s.name, s.value) for s in samples] == [("a_total", 3), ("b", 1), ("c", 2)]
    assert all(s.labels["replica"] == 'r"1' for s in samples)
    assert samples[1].labels["route"] == "/v1/score"


@pytest.fixture
def replica_client() -> Any:
    settings = Settings(prototypes_dir=PROTOTYPES, api_key="k", max_body_bytes=4096)
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())
    app.add_middleware(ReplicaIdentity, replica="r-7")
    with TestClient(app, headers={"authorization": "Bearer k"}) as client:
        yield client


def test_every_answer_names_its_replica(replica_client: TestClient) -> None:
    ok = replica_client.post("/v1/score", json={"steps": [{"content": "2 + 2 = 4"}]})
    refused = replica_client.post("/v1/score", json={}, headers={"authorization": ""})
    oversize = replica_client.post("/v1/score", content=b"x" * 5000)
    assert [r.status_code for r in (ok, refused, oversize)] == [200, 401, 413]
    assert all(r.headers["x-scribe-replica"] == "r-7" for r in (ok, refused, oversize))


def test_metrics_are_labelled_by_replica(replica_client: TestClient) -> None:
    replica_client.post("/v1/score", json={"steps": [{"content": "2 + 2 = 4"}]})
    scrape = replica_client.get("/metrics")
    assert scrape.status_code == 200
    assert int(scrape.headers["content-length"]) == len(scrape.content)
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    assert {s.labels["replica"] for f in families.values() for s in f.samples} == {"r-7"}
    assert any(s.labels.get("route") == "/v1/score" for s in families["scribe_requests"].samples)


def test_the_proxys_request_id_is_not_sent_twice(replica_client: TestClient) -> None:
    """Serve's proxy adds the request's id to the response itself: the app's copy of the same
    id is dropped; an id the app refused leaves the app's own, which differs."""
    same = replica_client.get("/healthz", headers={"x-request-id": "proxy-id-1"})
    assert "x-request-id" not in same.headers
    refused = replica_client.get("/healthz", headers={"x-request-id": "bad id"})
    assert refused.headers["x-request-id"] not in ("", "bad id")
