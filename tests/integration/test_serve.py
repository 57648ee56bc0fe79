"""`scribe serve` as users run it: a real uvicorn process on loopback, the embedded judge,
and the Python client over HTTP."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from scribe_client import RewardClient
from scribe_client.protocol import ScoreResponse
from scribe_service.cli import main
from support import scribe_server

pytestmark = pytest.mark.real

COMPLETION = "First, compute 3 * 4 = 12, then add 1: the answer is 13."


@pytest.fixture(scope="module")
def serve_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve") / "serve.log"


@pytest.fixture(scope="module")
def served(judge_gguf: Path, serve_log: Path) -> Iterator[str]:
    env = {
        "SCRIBE_CACHE_DIR": str(judge_gguf.parent),
        "SCRIBE_MAX_STEP_CHARS": "800",
        "SCRIBE_MAX_CONTEXT_CHARS": "600",
        "SCRIBE_LOG_FORMAT": "json",
    }
    with scribe_server(serve_log, env) as url:
        yield url


def test_serve_is_ready_and_scores_over_http(served: str) -> None:
    with RewardClient(served) as client:
        ready = client.ready()
        assert ready.ready and ready.judge_model == "qwen2.5-coder-1.5b-instruct-q4_k_m"
        assert ready.prototypes >= 25
        result = client.score(
            {
                "prompt": "What is 3 * 4 + 1?",
                "completion": COMPLETION,
                "outcome": 1.0,
            }
        )
    assert result.status == "ok"
    assert [s.char_span for s in result.steps] == [(0, len(COMPLETION))]
    assert all(s.score in (0, 1, 2, 3) for s in result.steps)
    assert result.reward is not None and 0.7 <= result.reward <= 1.0


def _listening(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port`, from the kernel's own tables."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        path = Path(table)
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel writes each 32-bit word in host byte order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


def _outward_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux's socket tables")
def test_serve_binds_loopback_only(served: str, serve_log: Path) -> None:
    """By default `scribe serve` listens on 127.0.0.1 alone: checked on the bound socket
    itself and on uvicorn's own report, not on the URL the test helper formats."""
    port = urlsplit(served).port
    assert port is not None
    assert _listening(port) == {"127.0.0.1"}
    assert f"Uvicorn running on http://127.0.0.1:{port}" in serve_log.read_text()
    outward = _outward_address()
    if outward is not None:
        with pytest.raises(OSError), socket.create_connection((outward, port), timeout=5):
            pass


def test_cli_against_the_served_service(
    served: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["route", "Step 1: Factor 196.\nStep 2: Keep the factors below 14.", "--url", served])
        == 0
    )
    assert "Keep the factors below 14." in capsys.readouterr().out

    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        json.dumps({"steps": [{"content": "2 + 2 = 4"}], "request_id": "cli"}) + "\n"
    )
    results = tmp_path / "results.jsonl"
    assert main(["score", str(requests), "--url", served, "--out", str(results)]) == 0
    assert "cli" in capsys.readouterr().out
    [line] = results.read_text().splitlines()
    result = ScoreResponse.model_validate_json(line)
    assert result.request_id == "cli" and result.steps[0].score in (0, 1, 2, 3)


def test_logs_are_json_lines_carrying_the_request_id(served: str, serve_log: Path) -> None:
    response = httpx.post(
        f"{served}/v1/route",
        json={"completion": "Step 1: Factor 196."},
        headers={"X-Request-ID": "trace-me-42"},
    )
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "trace-me-42"
    # The access line is written once the response has been sent, so it may land a moment
    # after the client has the response: wait for it.
    deadline = time.monotonic() + 10
    while True:
        # Native libraries may print their own lines; ours are the JSON objects.
        lines = serve_log.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        access = [r for r in records if r["request_id"] == "trace-me-42"]
        if access or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert access and access[-1]["path"] == "/v1/route" and access[-1]["status"] == 200
    assert {"ts", "level", "logger", "message", "duration_ms"} <= access[-1].keys()
    assert any(r["logger"] == "uvicorn.error" for r in records)  # uvicorn's own lines too
