from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from scribe_service.app import create_app
from scribe_service.settings import Settings
from support import FakeEmbedder, FakeJudge


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    settings.max_body_bytes = 4096
    settings.max_steps = 3
    settings.max_step_input_chars = 100
    settings.max_batch = 2
    with TestClient(create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())) as c:
        yield c


def _error(response: object) -> dict[str, str]:
    error: dict[str, str] = response.json()["error"]  # type: ignore[attr-defined]
    return error


def test_body_over_the_limit_is_a_413(client: TestClient) -> None:
    response = client.post("/v1/score", json={"completion": "x" * 5000})
    assert response.status_code == 413
    assert "SCRIBE_MAX_BODY_BYTES" in _error(response)["message"]


def test_chunked_body_over_the_limit_is_a_413(client: TestClient) -> None:
    chunks = (
        b'{"completion": "' + b"x" * 1000 + b'"}' if i == 0 else b" " * 1000 for i in range(6)
    )
    response = client.post(
        "/v1/score", content=chunks, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("payload", "param", "limit"),
    [
        pytest.param(
            {"completion": "a\n\nb\n\nc\n\nd"},
            "completion",
            "SCRIBE_MAX_STEPS",
            id="too-many-steps",
        ),
        pytest.param(
            {"steps": [{"content": "ok"}, {"content": "y" * 101}]},
            "steps[1]",
            "SCRIBE_MAX_STEP_INPUT_CHARS",
            id="step-too-long",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "z" * 101},
                ]
            },
            "messages[1]",
            "SCRIBE_MAX_STEP_INPUT_CHARS",
            id="message-too-long",
        ),
    ],
)
def test_trajectory_limits_are_422s_naming_the_field_and_limit(
    client: TestClient, payload: dict[str, object], param: str, limit: str
) -> None:
    for path in ("/v1/score", "/v1/route"):
        response = client.post(path, json=payload)
        assert response.status_code == 422
        error = _error(response)
        assert error["param"] == param and limit in error["message"]


def test_batch_limits(client: TestClient) -> None:
    ok = {"completion": "a"}
    response = client.post("/v1/score/batch", json={"requests": [ok, ok, ok]})
    assert response.status_code == 422 and _error(response)["param"] == "requests"
    long = {"steps": [{"content": "y" * 101}]}
    response = client.post("/v1/score/batch", json={"requests": [ok, long]})
    assert response.status_code == 422 and _error(response)["param"] == "requests[1].steps[0]"
