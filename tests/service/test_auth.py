from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from scribe_client import AuthenticationError, RewardClient
from scribe_service.app import create_app
from scribe_service.auth import is_loopback
from scribe_service.cli import main
from scribe_service.settings import Settings
from support import FakeEmbedder, FakeJudge

KEY = "s3cret-key"


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    settings.api_key = SecretStr(KEY)
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())) as c:
        yield c


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong"),
        pytest.param({"Authorization": KEY}, id="no-scheme"),
    ],
)
def test_every_route_but_healthz_and_docs_needs_the_key(
    client: TestClient, headers: dict[str, str]
) -> None:
    assert client.get("/healthz").status_code == 200
    for method, path in [("GET", "/readyz"), ("GET", "/v1/prototypes"), ("POST", "/v1/score")]:
        response = client.request(method, path, headers=headers, json={"completion": "a"})
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_documentation_opens_without_the_key(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assets = [a for a in page.text.split('"') if a.startswith("/static-offline-docs/")]
    assert assets, "the page names none of its own assets"
    assert all(client.get(asset).status_code == 200 for asset in assets)
    assert "/v1/score" in client.get("/openapi.json").json()["paths"]
    # The prefix opens the assets only, not a path that merely starts like them.
    for path in ("/static-offline-docsx", "/docs/x", "/openapi.jsonx"):
        assert client.get(path).status_code == 401, path


def test_the_right_key_passes(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    assert client.post("/v1/score", headers=headers, json={"completion": "a"}).status_code == 200
    with RewardClient("http://t", api_key=KEY, http_client=client) as scribe:
        assert scribe.ready().ready
    with RewardClient("http://t", api_key="nope", http_client=client) as scribe:
        with pytest.raises(AuthenticationError) as error:
            scribe.prototypes()
    assert error.value.request_id  # the service's X-Request-ID, for finding it in the logs


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_a_public_bind_without_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "SCRIBE_API_KEY" in capsys.readouterr().out
