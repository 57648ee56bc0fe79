"""`scribe eval labels` through the real thing: MiniLM routing and the SmolLM2 judge behind
llama.cpp's server, on two tiny hand-written records. SmolLM2's verdicts are poor; what is
checked is the plumbing: the report folder, zero judge calls on a rerun, and a killed run
that resumes without redoing what it had written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scribe_service.evaluation.evaluate import Options, Result, evaluate
from scribe_service.pipeline.judge import Completion, Messages, OpenAIJudge, Sampling
from scribe_service.settings import Settings
from support import PROTOTYPES

pytestmark = [pytest.mark.real, pytest.mark.anyio]
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "eval" / "agent.jsonl"
RECORDS, STEPS, ARMS = 2, 2, 4
TOTAL = RECORDS * STEPS * ARMS


class CountingJudge:
    """The real server's backend, counting every call that reaches it."""

    def __init__(self, url: str) -> None:
        self.inner = OpenAIJudge(url)
        self.calls = 0

    @property
    def model(self) -> str:
        return self.inner.model

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        self.calls += 1
        return await self.inner.complete(messages, schema, sampling)

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        self.calls += 1
        return await self.inner.score_token(messages, sampling)

    async def check(self) -> None:
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()


def settings(url: str, tmp_path: Path) -> Settings:
    return Settings(prototypes_dir=PROTOTYPES, cache_dir=tmp_path / "cache", judge_url=url)


async def run(url: str, out: Path, tmp_path: Path) -> tuple[Result, int]:
    judge = CountingJudge(url)
    options = Options(
        command="labels", data=FIXTURE, out=out, arms=["scribe", "generic", "rar", "direct"],
        limit=RECORDS, n_resamples=20, concurrency=1, quiet=True,
    )  # fmt: skip
    try:
        result = await evaluate(options, settings(url, tmp_path), judge_backend=judge)
    finally:
        await judge.aclose()
    return result, judge.calls


def lines(out: Path) -> list[dict[str, Any]]:
    path = out / "judgments.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


async def test_report_then_a_rerun_without_judge_calls(
    small_judge_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    result, calls = await run(small_judge_url, out, tmp_path)
    assert result.judgments_made == TOTAL
    assert calls >= TOTAL  # every judgment reached the server (retries and rubrics add more)
    for arm, data in result.summary["arms"].items():
        assert data["n"] + data["failed"] == RECORDS * STEPS, arm
    for png in ("metrics.png", "score_by_label.png", "calibration.png", "per_prototype.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    summary = json.loads((out / "summary.json").read_text())
    assert summary["setup"]["judge_model"] == "smollm2-135m"

    again, calls = await run(small_judge_url, out, tmp_path)
    assert calls == 0
    assert again.judgments_made == 0
    assert len(lines(out)) == TOTAL


async def test_a_killed_run_resumes(small_judge_url: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    command = [
        sys.executable, "-m", "scribe_service.cli", "eval", "labels", str(FIXTURE),
        "--limit", str(RECORDS), "--out", str(out), "--judge-url", small_judge_url,
        "--concurrency", "1", "--bootstrap", "20", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "SCRIBE_PROTOTYPES_DIR": str(PROTOTYPES)}
    log = tmp_path / "eval.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while len(lines(out)) < 3:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "no judgments written"
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    before = lines(out)
    assert 3 <= len(before) < TOTAL

    result, _ = await run(small_judge_url, out, tmp_path)
    assert result.judgments_made == TOTAL - len(before)
    after = lines(out)
    assert after[: len(before)] == before  # nothing redone or rewritten
    keys = {(x["arm"], x["record_id"], x["step"]) for x in after}
    assert len(after) == len(keys) == TOTAL
