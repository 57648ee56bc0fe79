"""`scribe eval labels` and `scribe eval perturb` through the real thing: MiniLM routing and
the SmolLM2 judge behind llama.cpp's server, on two tiny hand-written records each. SmolLM2's
verdicts are poor; what is checked is the plumbing: the report folder, zero judge calls on a
rerun, a killed run that resumes without redoing what it had written, and, for `perturb`,
what holds whatever the judge says: the arithmetic check caps every wrong-result twin."""

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

from scribe_service.evaluation.arms import ArmName
from scribe_service.evaluation.evaluate import Options, Result, evaluate
from scribe_service.evaluation.perturbation import PerturbOptions, perturb
from scribe_service.pipeline.checks import ARITHMETIC_CAP, SCHEMA_CAP
from scribe_service.pipeline.judge import Completion, Messages, OpenAIJudge, Sampling
from scribe_service.settings import Settings
from support import PROTOTYPES

pytestmark = [pytest.mark.real, pytest.mark.anyio]
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "eval" / "agent.jsonl"
RECORDS, STEPS = 2, 2
ALL_ARMS: tuple[ArmName, ...] = ("scribe", "generic", "rar", "direct")
TOTAL = RECORDS * STEPS * len(ALL_ARMS)


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


async def run(
    url: str, out: Path, tmp_path: Path, arms: list[ArmName] | None = None
) -> tuple[Result, int]:
    judge = CountingJudge(url)
    options = Options(
        command="labels", data=FIXTURE, out=out, arms=arms or list(ALL_ARMS), limit=RECORDS,
        n_resamples=20, concurrency=1, quiet=True,
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
    # Resuming is the same for every arm; rar, whose per-task rubric costs SmolLM2 about
    # twenty verdicts, is left to the test above.
    arms: list[ArmName] = ["scribe", "generic", "direct"]
    total = RECORDS * STEPS * len(arms)
    out = tmp_path / "report"
    command = [
        sys.executable, "-m", "scribe_service.cli", "eval", "labels", str(FIXTURE),
        "--limit", str(RECORDS), "--out", str(out), "--judge-url", small_judge_url,
        "--arms", ",".join(arms), "--concurrency", "1", "--bootstrap", "20", "--quiet",
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
    assert 3 <= len(before) < total

    result, _ = await run(small_judge_url, out, tmp_path, arms)
    assert result.judgments_made == total - len(before)
    after = lines(out)
    assert after[: len(before)] == before  # nothing redone or rewritten
    keys = {(x["arm"], x["record_id"], x["step"]) for x in after}
    assert len(after) == len(keys) == total


# --- perturb -------------------------------------------------------------------------------

PERTURB_FIXTURE = FIXTURE.with_name("perturb_real.jsonl")
PERTURB_ARMS = ["scribe", "direct"]
# The kinds a deterministic check sees, and only these: each more kind adds judge calls, and
# SmolLM2 on two cores takes about a second per rubric prompt.
ARITHMETIC = ["arithmetic_result", "arithmetic_operand"]
KINDS = [*ARITHMETIC, "tool_argument_schema"]
PER_KIND = 2
# SmolLM2 puts 2-25 % of its next-token probability on the digits 0-3 (it would rather open a
# code fence); the default 0.5 would fail every logprob judgment.
MIN_SCORE_MASS = 0.005


def perturb_command(url: str, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "scribe_service.cli", "eval", "perturb", str(PERTURB_FIXTURE),
        "--out", str(out), "--arms", ",".join(PERTURB_ARMS), "--kinds", ",".join(KINDS),
        "--judge-mode", "logprob", "--per-kind", str(PER_KIND), "--judge-url", url,
        "--concurrency", "1", "--bootstrap", "20", "--quiet",
    ]  # fmt: skip


async def rerun_perturb(
    url: str, out: Path, tmp_path: Path, reuse: tuple[Path, ...] = ()
) -> tuple[Result, int]:
    judge = CountingJudge(url)
    options = PerturbOptions(
        data=PERTURB_FIXTURE, out=out, arms=list(PERTURB_ARMS), kinds=list(KINDS),
        per_kind=PER_KIND, n_resamples=20, concurrency=1, quiet=True, reuse=reuse,
    )  # fmt: skip
    logprob = settings(url, tmp_path).model_copy(
        update={"judge_mode": "logprob", "judge_min_score_mass": MIN_SCORE_MASS}
    )
    try:
        result = await perturb(options, logprob, judge_backend=judge)
    finally:
        await judge.aclose()
    return result, judge.calls


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


async def test_perturb_report_checks_cap_the_twins_and_a_rerun_is_free(
    small_judge_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "perturb"
    env = {
        **os.environ,
        "SCRIBE_PROTOTYPES_DIR": str(PROTOTYPES),
        "SCRIBE_CACHE_DIR": str(tmp_path / "cache"),
        "SCRIBE_JUDGE_MIN_SCORE_MASS": str(MIN_SCORE_MASS),
    }
    done = subprocess.run(
        perturb_command(small_judge_url, out), env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for png in ("detection.png", "score_drop.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    assert (out / "report.md").read_text().strip()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["setup"]["judge_model"] == "smollm2-135m"
    assert summary["setup"]["mode"] == "logprob"

    corruptions = jsonl(out / "corruptions.jsonl")
    judgments = jsonl(out / "judgments.jsonl")
    originals = {(c["record_id"], c["step"]) for c in corruptions}
    assert summary["judgments_made"] == len(judgments)
    assert len(judgments) == len(PERTURB_ARMS) * (len(corruptions) + len(originals))
    # The fixture holds two `a op b = c` steps and one tool call.
    assert summary["pairs"] == {
        "arithmetic_result": {"found": 2, "judged": 2},
        "arithmetic_operand": {"found": 2, "judged": 2},
        "tool_argument_schema": {"found": 1, "judged": 1},
    }
    for kind in ARITHMETIC:
        for arm in PERTURB_ARMS:
            # n counts pairs judged on both sides: 0 would mean nothing was measured.
            assert summary["arms"][arm]["kinds"][kind]["n"] > 0, (arm, kind)

    # Whatever SmolLM2 says, the routed prototype's check finds the twin's error and caps it:
    # a wrong result at ARITHMETIC_CAP, a schema break at SCHEMA_CAP. An original the judge
    # scored above the cap is therefore always detected (below it, a capped twin can tie).
    by_key = {(j["kind"], j["record_id"], j["step"], j["arm"]): j for j in judgments}
    finding = {
        "arithmetic_result": ("arithmetic_error", ARITHMETIC_CAP),
        "arithmetic_operand": ("arithmetic_error", ARITHMETIC_CAP),
        "tool_argument_schema": ("schema_violation", SCHEMA_CAP),
    }
    detected: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    for c in corruptions:
        where = (c["record_id"], c["step"], "scribe")
        twin = by_key[(f"perturb:{c['kind']}:{c['id']}", *where)]
        original = by_key[("original", *where)]
        failure_mode, cap = finding[c["kind"]]
        assert failure_mode in twin["findings"] and not original["findings"], (twin, original)
        assert twin["status"] == original["status"] == "ok", (twin, original)
        assert twin["reward"] <= cap / 3 + 1e-9, twin
        if original["reward"] > cap / 3:
            assert twin["reward"] < original["reward"], (twin, original)
        detected[c["kind"]].append(twin["reward"] < original["reward"])
    for kind, hits in detected.items():  # the summary counts what the lines say
        assert summary["arms"]["scribe"]["kinds"][kind]["detection"]["value"] == (
            sum(hits) / len(hits)
        ), kind
    assert not any(j["findings"] for j in judgments if j["arm"] == "direct")  # no checks there

    again, calls = await rerun_perturb(small_judge_url, out, tmp_path)
    assert calls == 0
    assert again.judgments_made == 0
    assert again.summary["arms"] == summary["arms"]
    assert len(jsonl(out / "judgments.jsonl")) == len(judgments)

    # A new folder that reuses this one judges the twins only: every original is taken.
    fresh, calls = await rerun_perturb(small_judge_url, tmp_path / "reused", tmp_path, (out,))
    assert fresh.summary["judgments_reused"] == len(PERTURB_ARMS) * len(originals)
    assert calls == fresh.judgments_made == len(PERTURB_ARMS) * len(corruptions)
    taken = [j for j in jsonl(tmp_path / "reused" / "judgments.jsonl") if "reused_from" in j]
    assert {(j["record_id"], j["step"]) for j in taken} == originals
