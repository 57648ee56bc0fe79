"""The score log (SCRIBE_SCORE_LOG) through the real app: every scoring route writes one line
per step, rotation bounds the files, and a write error never fails a request.

Lines are written by a background thread; leaving the `TestClient` runs the lifespan's
shutdown, which drains and flushes the log, so each test reads the file after that.
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from scribe_client import RewardClient
from scribe_client.protocol import ScoreResponse
from scribe_service.app import create_app
from scribe_service.library import Library
from scribe_service.pipeline.judge import JudgeUnavailable
from scribe_service.score_log import ScoreLog
from scribe_service.settings import Settings
from support import FakeEmbedder, FakeJudge, uvicorn_in_thread

TWO_STEPS = "Step 1: Add.\n2 + 2 = 4\nStep 2: Answer.\n4"
LINE_KEYS = {
    "time", "request_id", "metadata", "library_version", "judge_model", "judge_mode", "step",
    "message_index", "prototype_id", "domain", "fallback", "similarity", "score",
    "expected_score", "reward", "status", "error",
}  # fmt: skip


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]


def _app_client(settings: Settings, judge: FakeJudge | None = None) -> TestClient:
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=judge or FakeJudge())
    return TestClient(app)


def _post(client: TestClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _metric(client: TestClient, outcome: str) -> float:
    text = client.get("/metrics").text
    found = re.search(rf'^scribe_score_log_lines_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
    assert found is not None, "the score log's counter is not exported"
    return float(found.group(1))


def _wait_for(client: TestClient, outcome: str, at_least: float) -> None:
    deadline = time.monotonic() + 10
    while _metric(client, outcome) < at_least:
        assert time.monotonic() < deadline, f"{outcome} never reached {at_least}"
        time.sleep(0.02)


def test_every_scoring_route_logs_each_step(
    settings: Settings, tmp_path: Path, library: Library
) -> None:
    settings.score_log = tmp_path / "logs" / "scores.jsonl"  # the folder is made
    metadata = {"global_step": 120, "run": "grpo-7", "nested": {"é": [1, None, 2.5]}}
    with _app_client(settings) as client:
        single = _post(
            client, "/v1/score", {"completion": TWO_STEPS, "metadata": metadata, "request_id": "a"}
        )
        batch = _post(
            client,
            "/v1/score/batch",
            {"requests": [
                {"completion": TWO_STEPS, "metadata": {"global_step": 121}, "request_id": "b"},
                {"steps": [{"content": "search for the director"}], "request_id": "c"},
            ]},
        )  # fmt: skip
        prompt = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
        rewards = _post(client, "/get_reward", {"query": [prompt + TWO_STEPS], "prompts": [prompt]})
        assert len(rewards["rewards"]) == 1
    lines = _lines(settings.score_log)

    assert all(set(line) == LINE_KEYS for line in lines)
    assert [(line["request_id"], line["step"]) for line in lines[:5]] == [
        ("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0),
    ]  # fmt: skip
    assert len(lines) == 7  # and two steps from /get_reward, whose request id is generated
    assert [line["metadata"] for line in lines] == [metadata] * 2 + [{"global_step": 121}] * 2 + [
        None
    ] * 3
    for line, step in zip(lines, single["steps"] + batch["results"][0]["steps"], strict=False):
        for key in ("prototype_id", "fallback", "similarity", "score", "reward", "status"):
            assert line[key] == step[key]
    for line in lines:
        assert line["domain"] == library.prototypes[line["prototype_id"]].domain
        assert line["status"] == "ok" and line["score"] == 2 and line["error"] is None
        assert line["library_version"] == library.version and line["judge_model"] == "fake-judge"
        assert line["judge_mode"] == "verdict" and line["time"].endswith("+00:00")


def test_failed_steps_are_logged_with_their_error(settings: Settings, tmp_path: Path) -> None:
    settings.score_log = tmp_path / "scores.jsonl"
    settings.judge_max_attempts = 1
    judge = FakeJudge(replies=[JudgeUnavailable("down")])
    with _app_client(settings, judge) as client:
        answer = _post(client, "/v1/score", {"steps": [{"content": "a"}], "metadata": {"s": 1}})
        assert answer["status"] == "failed"
    [line] = _lines(settings.score_log)
    assert line["status"] == "failed" and line["error"] == "judge_unavailable"
    assert line["score"] is None and line["reward"] is None and line["metadata"] == {"s": 1}


def test_no_log_unless_configured(settings: Settings, tmp_path: Path) -> None:
    with _app_client(settings) as client:
        _post(client, "/v1/score", {"completion": TWO_STEPS})
        assert "scribe_score_log" not in client.get("/metrics").text
    assert not list(tmp_path.rglob("*.jsonl*"))


def test_rotation_keeps_backups_and_bounds_the_size(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    settings.score_log = path
    settings.score_log_max_mb = 4096 / 2**20  # 4 KiB
    settings.score_log_backups = 2
    with _app_client(settings) as client:
        for number in range(40):  # about 20 KiB of lines
            _post(client, "/v1/score", {"completion": TWO_STEPS, "request_id": f"r{number}"})
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("scores"))
    assert files == ["scores.jsonl", "scores.jsonl.1", "scores.jsonl.2"]
    # One record (a trajectory's lines) may cross the limit; never more.
    record = max(len(json.dumps(line)) + 1 for line in _lines(path)) * 2
    assert all((tmp_path / name).stat().st_size <= 4096 + record for name in files)
    newest = _lines(path)
    assert newest[-1]["request_id"] == "r39"
    # Backups are older: .2 before .1 before the live file, and no line is torn.
    ids = [int(line["request_id"][1:]) for name in reversed(files) for line in _lines(
        tmp_path / name)]  # fmt: skip
    assert ids == sorted(ids) and ids[-1] == 39 and ids[0] > 0  # the oldest rotated away


def test_a_write_error_never_fails_a_request(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scores.jsonl"
    settings.score_log = path
    caplog.set_level(logging.WARNING, logger="scribe_service.score_log")
    with _app_client(settings) as client:
        path.mkdir()  # a directory where the log should be: every write fails
        for _ in range(3):
            assert _post(client, "/v1/score", {"completion": TWO_STEPS})["status"] == "ok"
        _wait_for(client, "failed", 6)
        assert _metric(client, "written") == 0
        cannot = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(cannot) == 1  # logged once, not once per line

        path.rmdir()  # fixed: writing resumes by itself
        _post(client, "/v1/score", {"completion": TWO_STEPS, "request_id": "after"})
        _wait_for(client, "written", 2)
        assert any("writing again" in r.getMessage() for r in caplog.records)
    assert [line["request_id"] for line in _lines(path)] == ["after", "after"]


def test_a_directory_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="score_log is a directory"):
        Settings(score_log=tmp_path)
    with pytest.raises(ValidationError, match="score_log_backups"):
        Settings(score_log=tmp_path / "x.jsonl", score_log_backups=0)
    with pytest.raises(ValidationError, match="score_log_max_mb"):
        Settings(score_log=tmp_path / "x.jsonl", score_log_max_mb=0)


def test_concurrent_requests_through_real_uvicorn(settings: Settings, tmp_path: Path) -> None:
    settings.score_log = tmp_path / "scores.jsonl"
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge(delay=0.01))
    with uvicorn_in_thread(app) as url, RewardClient(url) as client:

        def send(step: int) -> str | None:
            request = {"completion": TWO_STEPS, "metadata": {"global_step": step}}
            return client.score(request).status

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(send, range(8))) == ["ok"] * 8
    lines = _lines(settings.score_log)
    steps = sorted(line["metadata"]["global_step"] for line in lines)
    assert steps == sorted(list(range(8)) * 2)


def test_close_writes_out_what_is_still_queued(
    settings: Settings, tmp_path: Path, library: Library
) -> None:
    path = tmp_path / "scores.jsonl"
    settings.score_log = path
    with _app_client(settings) as client:
        answer = _post(client, "/v1/score", {"completion": TWO_STEPS})
    response = ScoreResponse.model_validate(answer)
    path.unlink()
    score_log = ScoreLog(path, library=library)
    writer = score_log._writer
    assert writer is not None
    with writer.lock:  # the writer thread waits here, so every record stays queued
        score_log.record([response] * 50)
        time.sleep(0.05)
        assert not path.exists()
    score_log.close()
    assert len(_lines(path)) == 100
    score_log.record([response])  # after close: ignored, not queued behind a stopped writer
    assert len(_lines(path)) == 100


def test_the_app_starts_twice(settings: Settings, tmp_path: Path) -> None:
    settings.score_log = tmp_path / "scores.jsonl"
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())
    for _ in range(2):
        with TestClient(app) as client:
            _post(client, "/v1/score", {"completion": TWO_STEPS})
            _wait_for(client, "written", 2)  # counted afresh by each lifespan
    assert len(_lines(settings.score_log)) == 4
