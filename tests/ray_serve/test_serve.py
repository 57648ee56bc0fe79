"""The service on Ray Serve (scribe_service.ray_serve): two replicas behind Serve's proxy on a
local Ray instance, two stand-in judges on loopback. The tests run in file order on one
instance (starting Ray and two replicas takes tens of seconds on a small CPU); each leaves the
judges running and two replicas up."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from scribe_service.app import create_app
from scribe_service.settings import Settings
from support import PROTOTYPES, ROOT, fixture_records

pytestmark = pytest.mark.ray

HEADER = "x-scribe-replica"
SCRIPTS = Path(__file__).parent / "scripts"
AUTH = {"authorization": "Bearer ray-test-key"}
T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:g}s")


def replica_rss_mb() -> list[float]:
    """Resident memory of each Serve replica process (Ray titles them ServeReplica:app:...)."""
    sizes = []
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            if b"ServeReplica:scribe" not in (folder / "cmdline").read_bytes():
                continue
            status = (folder / "status").read_text()
        except OSError:
            continue
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS"))
        sizes.append(int(rss.split()[1]) / 1024)
    return sizes


def score_payload(number: int) -> dict[str, Any]:
    return {
        "steps": [{"content": f"Compute 6 * 7 = 42, then add {number}: {42 + number}."}],
        "request_id": f"ray-{number}",
    }


def trajectory() -> dict[str, Any]:
    record = fixture_records("hotpot")[0]
    return {"messages": record["messages"], "outcome": 1.0, "request_id": "ray-hotpot"}


def ray_run(python: Path, *argv: str) -> str:
    done = subprocess.run(
        [str(python), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_importing_the_service_imports_no_ray(ray_python: Path) -> None:
    """Ray is installed here, so only the imports' laziness keeps it out."""
    code = (
        "import sys, scribe_client, scribe_service.app, scribe_service.cli, "
        "scribe_service.ray_serve\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    assert ray_run(ray_python, "-c", code).strip() == "[]"


def test_serve_config_is_valid_and_the_rayservice_carries_it(ray_python: Path) -> None:
    """deploy/serve.yaml parses as Ray's `serve deploy` schema and build_app takes its args;
    deploy/rayservice.yaml's serveConfigV2 is the same config, for the pinned Ray."""
    serve_yaml = ROOT / "deploy" / "serve.yaml"
    assert "1 application(s)" in ray_run(
        ray_python, str(SCRIPTS / "check_config.py"), str(serve_yaml)
    )
    service = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(
        serve_yaml.read_text()
    )
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pin = next(r for r in extra["optional-dependencies"]["ray"] if r.startswith("ray[serve]=="))
    pinned = pin.split("==")[1]
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == pinned
    assert ray_run(ray_python, "-c", "import ray; print(ray.__version__)").strip() == pinned


@pytest.fixture(scope="module")
def in_process(cluster: Any) -> Iterator[TestClient]:
    """The same app in this process, configured as the replicas are: the reference answers."""
    args = cluster.args
    settings = Settings(
        prototypes_dir=PROTOTYPES,
        judge_url=args["judge_url"],
        api_key=args["api_key"],
        max_body_bytes=int(args["max_body_bytes"]),
    )
    with TestClient(create_app(settings)) as client:
        yield client


CASES = {
    "score": (200, "POST", "/v1/score", {"json": trajectory(), "headers": AUTH}),
    "batch": (
        200,
        "POST",
        "/v1/score/batch",
        {"json": {"requests": [score_payload(1), score_payload(2)]}, "headers": AUTH},
    ),
    "get_reward": (
        200, "POST", "/get_reward", {"json": {"query": ["Step 1: 6 * 7 = 42."]}, "headers": AUTH}
    ),
    "no-key": (401, "POST", "/v1/score", {"json": trajectory()}),
    "oversize": (413, "POST", "/v1/score", {"content": b"x" * 70_000, "headers": AUTH}),
    "request-id": (
        200, "GET", "/v1/prototypes", {"headers": {**AUTH, "x-request-id": "ray-fixed-id"}}
    ),
}  # fmt: skip


@pytest.mark.parametrize(("status", "method", "path", "kwargs"), CASES.values(), ids=CASES.keys())
def test_proxy_answers_as_the_in_process_app(
    cluster: Any,
    in_process: TestClient,
    status: int,
    method: str,
    path: str,
    kwargs: dict[str, Any],
) -> None:
    through_serve = httpx.request(method, cluster.url + path, timeout=60, **kwargs)
    reference = in_process.request(method, path, **kwargs)
    assert through_serve.status_code == reference.status_code == status
    assert through_serve.json() == reference.json()
    # The request id goes back out once (Serve's proxy and the app agree on it): the one
    # sent, else a fresh one.
    sent = kwargs.get("headers", {}).get("x-request-id")
    echoed = through_serve.headers.get_list("x-request-id")
    assert len(echoed) == 1
    assert echoed == [sent] == [reference.headers["x-request-id"]] if sent else echoed[0]
    assert through_serve.headers[HEADER]


def test_both_replicas_answer_and_label_their_metrics(cluster: Any) -> None:
    replicas = set(cluster.control.replicas())
    assert len(replicas) == 2
    seen: set[str] = set()
    for number in range(40):
        response = httpx.post(
            f"{cluster.url}/v1/score", json=score_payload(number), headers=AUTH, timeout=60
        )
        assert response.status_code == 200
        seen.add(response.headers[HEADER])
        if seen == replicas:
            break
    assert seen == replicas
    for _ in range(20):
        scrape = httpx.get(f"{cluster.url}/metrics", headers=AUTH, timeout=30)
        assert scrape.status_code == 200
        families = list(text_string_to_metric_families(scrape.text))
        labels = {s.labels.get("replica") for f in families for s in f.samples}
        # Every sample names the replica that the header names: a scrape means something.
        assert labels == {scrape.headers[HEADER]}
        assert any(f.name == "scribe_requests" for f in families)


def test_one_judge_stopped_the_other_takes_the_steps(cluster: Any) -> None:
    first, second = cluster.judges
    first.stop()
    try:
        before = second.calls()
        for number in range(6):
            response = httpx.post(
                f"{cluster.url}/v1/score", json=score_payload(100 + number), headers=AUTH,
                timeout=60,
            )  # fmt: skip
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "ok"
        assert second.calls() - before >= 6
    finally:
        first.start()


def test_both_judges_stopped_is_503_with_retry_after_and_no_restart(cluster: Any) -> None:
    replicas = cluster.control.replicas()
    for judge in cluster.judges:
        judge.stop()
    unavailable: set[str] = set()
    try:
        started = time.monotonic()
        while unavailable != set(replicas) and time.monotonic() - started < 60:
            response = httpx.post(
                f"{cluster.url}/v1/score", json=score_payload(200), headers=AUTH, timeout=60
            )
            # Before a replica counts its judges down, the steps fail inside a 200.
            assert response.status_code in (200, 503), response.text
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1
                unavailable.add(response.headers[HEADER])
        assert unavailable == set(replicas)
        # The outage outlasts several health checks (every 2 s here): liveness only, so no
        # replica was replaced.
        time.sleep(5)
        assert cluster.control.replicas() == replicas
    finally:
        for judge in cluster.judges:
            judge.start()
    wait_until(
        lambda: (
            httpx.post(
                f"{cluster.url}/v1/score", json=score_payload(201), headers=AUTH, timeout=60
            ).status_code
            == 200
        ),
        timeout=30,
        what="the judges back in",
    )
    assert cluster.control.replicas() == replicas


def test_killed_replica_requests_keep_succeeding_and_serve_replaces_it(cluster: Any) -> None:
    before = cluster.control.replicas()
    cluster.control.send("kill", replica=before[0])
    started = time.monotonic()
    statuses: list[int] = []
    while time.monotonic() - started < 120:
        response = httpx.post(
            f"{cluster.url}/v1/score", json=score_payload(300), headers=AUTH, timeout=60
        )
        statuses.append(response.status_code)
        answer = cluster.control.send("replicas")
        # Named while it starts, counted RUNNING by Serve once it serves.
        replaced = len(answer["ids"]) == 2 and before[0] not in answer["ids"]
        if replaced and answer["states"] == {"RUNNING": 2}:
            break
    now = cluster.control.replicas()
    assert before[0] not in now and before[1] in now and len(now) == 2
    assert set(statuses) == {200}, statuses
    # The new replica answers too.
    seen = {
        httpx.post(
            f"{cluster.url}/v1/score", json=score_payload(n), headers=AUTH, timeout=60
        ).headers[HEADER]
        for n in range(30)
    }
    assert seen == set(now)


def test_redeploy_lets_a_slow_call_finish(cluster: Any) -> None:
    before = set(cluster.control.replicas())
    for judge in cluster.judges:
        judge.slow_down(6.0)
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                httpx.post, f"{cluster.url}/v1/score", json=score_payload(400), headers=AUTH,
                timeout=120,
            )  # fmt: skip
            time.sleep(1.5)  # the request now waits on the judge
            # A changed setting is new code to Serve: every replica is replaced (by one: the
            # load test starts from one replica).
            cluster.deploy(judge_timeout="110", num_replicas="1")
            response = in_flight.result()
    finally:
        for judge in cluster.judges:
            judge.slow_down(0.0)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    assert response.headers[HEADER] in before
    after = set(cluster.control.replicas())
    assert len(after) == 1 and not after & before


async def load(url: str, *, clients: int, seconds: float) -> tuple[int, list[str]]:
    """`clients` clients scoring one trajectory after another for `seconds`: how many were
    answered 200, and what happened to any that were not (a lost request)."""
    done, lost = 0, []
    stop_at = time.monotonic() + seconds

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal done
        sent = 0
        while time.monotonic() < stop_at:
            sent += 1
            try:
                response = await http.post("/v1/score", json=score_payload(number * 10**6 + sent))
            except httpx.HTTPError as exc:
                lost.append(f"{type(exc).__name__}: {exc}")
                continue
            if response.status_code == 200:
                done += 1
            else:
                lost.append(f"HTTP {response.status_code}: {response.text[:200]}")

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(n, http) for n in range(clients)))
    return done, lost


def test_two_replicas_against_one_under_load(cluster: Any) -> None:
    """Zero-latency judges: the replicas' own work bounds throughput. Prints the ratio."""
    seconds = 10.0

    def measure() -> float:
        done, lost = asyncio.run(load(cluster.url, clients=8, seconds=seconds))
        assert lost == []
        assert done > 0
        return done / seconds

    assert len(cluster.control.replicas()) == 1
    one = measure()
    two_s = cluster.deploy(num_replicas="2")
    rss = replica_rss_mb()
    two = measure()
    print(
        f"\nray serve: instance {cluster.control.ready_s:.1f} s, first deploy (2 replicas) "
        f"{cluster.deploy_s:.1f} s, redeploy to 2 replicas {two_s:.1f} s; replica RSS "
        f"{', '.join(f'{m:.0f}' for m in rss)} MB; throughput 1 replica {one:.1f}/s, "
        f"2 replicas {two:.1f}/s, ratio {two / one:.2f}"
    )
