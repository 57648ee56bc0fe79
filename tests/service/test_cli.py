from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scribe_service import app
from scribe_service.app import create_app
from scribe_service.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    main,
    read_requests,
    request_from_record,
)
from scribe_service.pipeline.judge import Messages, Sampling
from scribe_service.pipeline.run import Pipeline
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, FakeJudge, uvicorn_in_thread


def test_prototypes_lists_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prototypes"]) == 0
    out = capsys.readouterr().out
    assert "generic_step" in out and "search_query_formulation" in out


def test_score_reads_requests_and_dataset_records(
    tmp_path: Path, hotpot_records: list[dict[str, Any]]
) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        {"completion": "Let's add.", "request_id": "mine"},
        hotpot_records[0],
        {"steps": [{"content": "x"}]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    requests = list(read_requests(path, limit=None))
    assert [r.request_id for r in requests] == ["mine", hotpot_records[0]["id"], "line-3"]
    assert requests[1].messages is not None and requests[1].tools is not None
    assert len(list(read_requests(path, limit=2))) == 2


def test_unusable_record_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="line 4"):
        request_from_record({"text": "?"}, 4)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"completion": ""}\n')
    assert main(["score", str(path), "--url", "http://127.0.0.1:9"]) == 2
    assert "error" in capsys.readouterr().out


def test_prototypes_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCRIBE_PROTOTYPES_DIR", str(tmp_path / "missing"))
    assert main(["prototypes"]) == 2
    assert "not found" in capsys.readouterr().out
    monkeypatch.setenv("SCRIBE_PROTOTYPES_DIR", str(PROTOTYPES))
    assert main(["prototypes"]) == 0


class MarkedStepsFail(FakeJudge):
    """Cannot judge a step that says UNJUDGEABLE: it answers no verdict, as a broken model would.

    Only the step being judged and those before it are in a prompt, so a trajectory whose last
    step is marked comes back partial, and one whose only step is marked comes back failed."""

    async def _next(self, messages: Messages, sampling: Sampling) -> str | None:
        await super()._next(messages, sampling)
        return "no verdict here" if "UNJUDGEABLE" in messages[-1]["content"] else None


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """`scribe score` without --url builds the real pipeline, with the fake embedder and a judge
    that fails on marked steps instead of the real models."""
    build = app.build_pipeline

    async def build_with_fakes(settings: Settings, **kwargs: Any) -> Pipeline:
        return await build(
            settings, embedder=FakeEmbedder(), judge_backend=MarkedStepsFail(), **kwargs
        )

    monkeypatch.setattr(app, "build_pipeline", build_with_fakes)
    monkeypatch.setenv("SCRIBE_JUDGE_MAX_ATTEMPTS", "1")  # one invalid answer fails the step
    monkeypatch.setenv("SCRIBE_MAX_STEPS", "3")


OK = {"request_id": "fine", "steps": [{"content": "Add 2 and 2."}, {"content": "So 4."}]}
PARTIAL = {"request_id": "half", "steps": [{"content": "Add 2 and 2."}, {"content": "UNJUDGEABLE"}]}
FAILED = {"request_id": "none", "steps": [{"content": "UNJUDGEABLE"}]}
TOO_LONG = {"request_id": "refused", "steps": [{"content": "x"}] * 4}  # SCRIBE_MAX_STEPS=3


def _score(
    tmp_path: Path, *records: dict[str, Any], url: str | None = None
) -> tuple[int, list[dict[str, Any]]]:
    path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    code = main(
        ["score", str(path), "--out", str(out), "--quiet", *(["--url", url] if url else [])]
    )
    return code, [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.usefixtures("in_process")
def test_score_exits_zero_when_every_trajectory_was_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, results = _score(tmp_path, OK, OK)
    assert code == EXIT_OK == 0
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert "2 trajectories: 2 ok, 0 partial, 0 failed, 0 not scored" in capsys.readouterr().err


@pytest.mark.usefixtures("in_process")
def test_score_has_its_own_exit_status_for_partial_trajectories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, results = _score(tmp_path, OK, PARTIAL)
    assert code == EXIT_PARTIAL not in (0, EXIT_FAILED)
    assert [r["status"] for r in results] == ["ok", "partial"]
    assert "2 trajectories: 1 ok, 1 partial, 0 failed, 0 not scored" in capsys.readouterr().err


@pytest.mark.usefixtures("in_process")
def test_score_fails_when_a_trajectory_failed_and_still_writes_every_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, results = _score(tmp_path, OK, FAILED, PARTIAL)
    assert code == EXIT_FAILED == 1
    assert [(r["request_id"], r["status"]) for r in results] == [
        ("fine", "ok"),
        ("none", "failed"),
        ("half", "partial"),
    ]
    [failed_step] = results[1]["steps"]
    assert failed_step["error"]["type"] == "judge_invalid_output" and results[1]["reward"] is None
    assert "3 trajectories: 1 ok, 1 partial, 1 failed, 0 not scored" in capsys.readouterr().err


@pytest.mark.usefixtures("in_process")
def test_score_fails_when_a_request_errored_and_goes_on_with_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, results = _score(tmp_path, TOO_LONG, OK)
    assert code == EXIT_FAILED
    assert [r["request_id"] for r in results] == ["fine"]
    err = capsys.readouterr().err
    assert "refused: " in err and "SCRIBE_MAX_STEPS" in err
    assert "2 trajectories: 1 ok, 0 partial, 0 failed, 1 not scored" in err


def test_score_against_a_service_counts_failures_and_refused_requests_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(prototypes_dir=PROTOTYPES, judge_max_attempts=1, max_steps=3)
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=MarkedStepsFail())
    with uvicorn_in_thread(app) as url:
        code, results = _score(tmp_path, OK, TOO_LONG, PARTIAL, url=url)
    assert code == EXIT_FAILED
    assert [(r["request_id"], r["status"]) for r in results] == [
        ("fine", "ok"),
        ("half", "partial"),
    ]
    err = capsys.readouterr().err
    assert "refused: " in err and "422" in err
    assert "3 trajectories: 1 ok, 1 partial, 0 failed, 1 not scored" in err
