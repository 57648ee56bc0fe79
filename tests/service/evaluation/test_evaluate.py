"""`scribe eval` end to end in-process, with a scripted judge and the hashed-words embedder:
the arms' prompts, failures counted (never scored), the report folder, resume, and refusal to
mix setups."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from scribe_service.evaluation import analysis
from scribe_service.evaluation.evaluate import Options, evaluate
from scribe_service.evaluation.runner import EvalError
from scribe_service.pipeline.judge import Completion, JudgeHTTPError, Messages, Sampling
from scribe_service.settings import Settings
from support import ARITHMETIC_RECORD, RAR_RUBRIC, FakeEmbedder, judgment_lines

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "eval"
# Steps whose text holds one of these are scored 0, every other step 3.
WRONG = ("Leipzig", "capital of Peru", "Lima", "Nile", "= 10.", "= 110", "= 30")


def step_text(messages: Messages) -> str:
    user = messages[-1]["content"]
    return user.split("Step:\n", 1)[1].split("Tool results returned", 1)[0]


class ScriptedJudge:
    """Scores by the step's text; fails (HTTP 400, not retried) on steps mentioning `fail_on`;
    writes a fixed rubric; records every call."""

    model = "scripted-judge"

    def __init__(self, fail_on: str = "novel Emma", stop_after: int | None = None) -> None:
        self.fail_on = fail_on
        self.calls: list[tuple[str, Messages, Sampling]] = []
        self.stop_after = stop_after
        self.reached = asyncio.Event()

    def _record(self, kind: str, messages: Messages, sampling: Sampling) -> None:
        self.calls.append((kind, messages, sampling))
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            self.reached.set()

    def _score(self, messages: Messages) -> int:
        step = step_text(messages)
        if self.fail_on in step:
            raise JudgeHTTPError(400, "bad request")
        return 0 if any(word in step for word in WRONG) else 3

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        await asyncio.sleep(0)
        if "criteria" in schema["properties"]:
            self._record("rubric", messages, sampling)
            return Completion(json.dumps(RAR_RUBRIC))
        self._record("verdict", messages, sampling)
        score = self._score(messages)
        return Completion(json.dumps({"rationale": "r", "failure_modes": [], "score": score}))

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        self._record("logprob", messages, sampling)
        score = self._score(messages)
        return Completion(str(score), top_logprobs=((str(score), -0.1), ("1", -3.0)))

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def options(out: Path, data: str = "agent.jsonl", **changes: Any) -> Options:
    base: dict[str, Any] = {
        "command": "labels",
        "data": FIXTURES / data,
        "out": out,
        "arms": ["scribe", "generic", "rar", "direct"],
        "n_resamples": 50,
        "quiet": True,
    }
    return Options(**{**base, **changes})


async def run(out: Path, settings: Settings, judge: ScriptedJudge, **changes: Any) -> Any:
    return await evaluate(
        options(out, **changes), settings, embedder=FakeEmbedder(), judge_backend=judge
    )


@pytest.mark.anyio
async def test_labels_report_counts_failures_and_matches_hand_values(
    tmp_path: Path, settings: Settings
) -> None:
    judge = ScriptedJudge()
    result = await run(tmp_path, settings, judge)
    summary = result.summary
    for arm in ("scribe", "generic", "rar", "direct"):
        data = summary["arms"][arm]
        # 6 records x 2 steps; the step mentioning "novel Emma" failed in every arm.
        assert (data["n"], data["failed"], data["failed_by_error"]) == (11, 1, {"judge_http": 1})
        assert data["incomplete_trajectories"] == 1
        # Positives all score 3; negatives 0 except the label-0 step that scores 3 (a tie):
        # (4 + 1/2) / 5 — the failed step is absent, not a 0.
        assert data["metrics"]["step_auroc"]["value"] == pytest.approx(0.9)
        assert data["metrics"]["step_auroc"]["n"] == 11
    assert result.judgments_made == 48
    assert result.rubric_calls == 6  # one instance rubric per task, not per step
    assert [kind for kind, *_ in judge.calls].count("rubric") == 6
    for name in ("summary.json", "report.md", "judgments.jsonl", "run.json", "rubrics.jsonl"):
        assert (tmp_path / name).is_file(), name
    for png in ("metrics.png", "score_by_label.png", "calibration.png", "per_prototype.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG", png

    def no_constants(name: str) -> None:
        raise AssertionError(f"summary.json holds {name}")

    written = json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_constants)
    assert written["arms"]["direct"]["failed"] == 1
    assert set(written["reference"]) == {analysis.MAJORITY, "blind/model-x", "blind/model-y"}
    report = (tmp_path / "report.md").read_text()
    assert "![metrics.png](metrics.png)" in report and "fitted on split `a`" in report


@pytest.mark.anyio
async def test_each_arm_sends_its_own_prompt(tmp_path: Path, settings: Settings) -> None:
    judge = ScriptedJudge(fail_on="(never)")
    await run(tmp_path, settings, judge, limit=1)
    verdicts = [m[1]["content"] for kind, m, _ in judge.calls if kind == "verdict"]
    assert len(verdicts) == 8  # 2 steps x 4 arms

    def arm_of(prompt: str) -> str:
        if "## Rubric" not in prompt:
            return "direct"
        if "(id: generic_step)" in prompt:
            return "generic"
        return "rar" if "(id: task_rubric)" in prompt else "scribe"

    assert sorted(map(arm_of, verdicts)) == sorted(["scribe", "generic", "rar", "direct"] * 2)
    rar = [p for p in verdicts if arm_of(p) == "rar"]
    assert all("Answers with an entity the evidence" in p for p in rar)  # the written pitfall
    direct = [p for p in verdicts if arm_of(p) == "direct"]
    assert all("failure mode" not in p.lower() for p in direct)
    # The same trajectory context in every arm.
    prompts = [m for kind, m, _ in judge.calls if kind == "verdict"]
    assert len({step_text(m) for m in prompts}) == 2


@pytest.mark.anyio
async def test_rerun_makes_no_judge_call(tmp_path: Path, settings: Settings) -> None:
    first = await run(tmp_path, settings, ScriptedJudge())
    again = ScriptedJudge()
    second = await run(tmp_path, settings, again)
    assert again.calls == []
    assert second.judgments_made == 0
    assert second.summary["arms"] == first.summary["arms"]
    assert len(judgment_lines(tmp_path)) == 48


@pytest.mark.anyio
async def test_retry_failed_redoes_only_failures(tmp_path: Path, settings: Settings) -> None:
    await run(tmp_path, settings, ScriptedJudge())
    again = ScriptedJudge(fail_on="(never)")
    result = await run(tmp_path, settings, again, retry_failed=True)
    assert result.judgments_made == 4  # the one failed step, in each arm
    assert result.summary["arms"]["scribe"]["failed"] == 0


@pytest.mark.anyio
async def test_an_interrupted_run_resumes_without_redoing(
    tmp_path: Path, settings: Settings
) -> None:
    stopping = ScriptedJudge(stop_after=20)
    task = asyncio.ensure_future(run(tmp_path, settings, stopping))
    await stopping.reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    done = len(judgment_lines(tmp_path))
    assert 0 < done < 48
    # A torn line, as a kill in mid-write leaves: cut off, and that judgment made again.
    with (tmp_path / "judgments.jsonl").open("a") as handle:
        handle.write('{"kind": "labels", "record_id": "fix')
    rest = ScriptedJudge()
    result = await run(tmp_path, settings, rest)
    assert result.judgments_made == 48 - done
    lines = judgment_lines(tmp_path)
    keys = [(x["arm"], x["record_id"], x["step"]) for x in lines]
    assert len(lines) == 48 and len(set(keys)) == 48


@pytest.mark.anyio
async def test_a_folder_from_another_setup_is_refused(tmp_path: Path, settings: Settings) -> None:
    await run(tmp_path, settings, ScriptedJudge(), arms=["direct"], limit=1)
    changed = settings.model_copy(update={"judge_temperature": 0.7})
    with pytest.raises(EvalError, match="another setup.*temperature"):
        await run(tmp_path, changed, ScriptedJudge(), arms=["direct"], limit=1)


@pytest.mark.anyio
async def test_reference_arms_on_data_without_references_are_refused(
    tmp_path: Path, settings: Settings
) -> None:
    judge = ScriptedJudge()
    with pytest.raises(EvalError, match=r"no record has a reference.*direct\+ref"):
        await run(tmp_path, settings, judge, data="processbench.jsonl",
                  arms=["direct", "direct+ref"])  # fmt: skip
    assert judge.calls == []


@pytest.mark.anyio
async def test_processbench_first_error_and_trajectory_auroc(
    tmp_path: Path, settings: Settings
) -> None:
    result = await run(tmp_path, settings, ScriptedJudge(), data="processbench.jsonl",
                       arms=["scribe"])  # fmt: skip
    data = result.summary["arms"]["scribe"]
    # Fitted on math-1/3/6 (split a): the first 0-scored step is the first error. Reported
    # on math-2 (error at step 1), math-4 (step 0) and math-5 (none): all three right.
    assert data["metrics"]["first_error_f1"]["value"] == 1.0
    assert data["metrics"]["first_error_f1"]["n"] == 3
    assert data["metrics"]["trajectory_auroc"]["value"] == 1.0
    assert 0 < data["first_error_threshold"] <= 1


@pytest.mark.anyio
async def test_consistency_repeats_with_distinct_seeds(tmp_path: Path, settings: Settings) -> None:
    judge = ScriptedJudge()
    result = await run(
        tmp_path, settings, judge, command="consistency", arms=["scribe", "direct"],
        repeats=3, temperature=1.0, logprob_repeats=2,
    )  # fmt: skip
    verdict_samplings = {(s.temperature, s.seed) for kind, _, s in judge.calls if kind == "verdict"}
    assert verdict_samplings == {(1.0, 0), (1.0, 1), (1.0, 2)}
    data = result.summary["arms"]["scribe"]
    assert data["n"] == 11 * 5 and data["failed"] == 5  # the failing step, in every repeat
    assert data["metrics"]["modal_agreement"]["value"] == 1.0
    assert data["metrics"]["score_std"]["value"] == 0.0
    assert data["metrics"]["logprob_expected_std"]["value"] == pytest.approx(0.0)
    assert data["metrics"]["cross_instance_agreement"]["n"] > 0
    assert (tmp_path / "consistency_histograms.png").is_file()


def test_cross_instance_by_hand() -> None:
    entries = [
        ("t1", "p", 1, 3),
        ("t1", "p", 1, 2),  # same task as the first: never paired with it
        ("t2", "p", 1, 3),
        ("t3", "p", -1, 0),  # another label: no partner
        ("t4", "q", 1, 3),  # another prototype: no partner
    ]
    # Pairs: (t1:3, t2:3) equal, (t1:2, t2:3) gap 1.
    assert analysis.cross_instance(entries) == (0.5, 0.5, 2)
    assert analysis.cross_instance([("t1", "p", 1, 3)]) == (None, None, 0)


class NoRubricJudge(ScriptedJudge):
    """Answers every rubric request with text that is no rubric."""

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        if "criteria" in schema["properties"]:
            self._record("rubric", messages, sampling)
            return Completion("I cannot write a rubric.")
        return await super().complete(messages, schema, sampling)


@pytest.mark.anyio
async def test_an_unusable_rubric_fails_the_task_steps_not_the_run(
    tmp_path: Path, settings: Settings
) -> None:
    judge = NoRubricJudge(fail_on="(never)")
    result = await run(tmp_path, settings, judge, arms=["rar", "direct"], limit=2)
    rar = result.summary["arms"]["rar"]
    assert (rar["n"], rar["failed"], rar["failed_by_error"]) == (0, 4, {"judge_invalid_output": 4})
    assert result.summary["arms"]["direct"]["failed"] == 0
    # Three attempts per task, shared by the task's steps; nothing cached for a rerun.
    assert [kind for kind, *_ in judge.calls].count("rubric") == 2 * 3
    assert not (tmp_path / "rubrics.jsonl").exists()
    messages = [x["error_message"] for x in judgment_lines(tmp_path) if x["arm"] == "rar"]
    assert all(m.startswith("instance rubric: no JSON rubric") for m in messages)


@pytest.mark.anyio
async def test_logprob_mode_judges_every_arm_by_the_score_digit(
    tmp_path: Path, settings: Settings
) -> None:
    judge = ScriptedJudge(fail_on="(never)")
    logprob = settings.model_copy(update={"judge_mode": "logprob"})
    result = await run(tmp_path, logprob, judge, limit=2)
    kinds = [kind for kind, *_ in judge.calls]
    assert kinds.count("logprob") == 16 and kinds.count("verdict") == 0
    assert kinds.count("rubric") == 2  # RaR still writes its rubric as JSON
    prompts = [m[1]["content"] for kind, m, _ in judge.calls if kind == "logprob"]
    assert all(p.rstrip().endswith("Score:") for p in prompts)
    lines = judgment_lines(tmp_path)
    assert all(x["mode"] == "logprob" and x["expected_score"] is not None for x in lines)
    assert result.summary["setup"]["mode"] == "logprob"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["verdict", "logprob"])
async def test_a_check_cap_keeps_the_judge_score_beside_it(
    tmp_path: Path, settings: Settings, mode: str
) -> None:
    data = tmp_path / "arith.jsonl"
    data.write_text(json.dumps(ARITHMETIC_RECORD) + "\n", encoding="utf-8")
    settings = settings.model_copy(update={"judge_mode": mode})
    out = tmp_path / "out"
    result = await run(out, settings, ScriptedJudge(), data=data, arms=["generic", "direct"])
    lines = {(line["step"], line["arm"]): line for line in judgment_lines(out)}
    # The judge gives 3; the generic rubric's arithmetic check caps the wrong sum at 1.
    capped = lines[0, "generic"]
    assert (capped["score"], capped["judge_score"], capped["capped_by_check"]) == (1, 3, True)
    assert capped["findings"] == ["arithmetic_error"]
    if mode == "logprob":
        assert capped["expected_score"] == 1.0
        assert capped["judge_expected_score"] == pytest.approx(
            (3 * math.exp(-0.1) + math.exp(-3.0)) / (math.exp(-0.1) + math.exp(-3.0)), abs=1e-4
        )  # the verdict keeps 4 decimals
    else:
        assert capped["judge_expected_score"] is None
    assert capped["reward"] == pytest.approx(1 / 3)
    assert analysis.judge_reward(capped) == pytest.approx((capped["judge_expected_score"] or 3) / 3)
    # `direct` runs no checks; the answer step claims no sum: neither is capped.
    for key in ((0, "direct"), (1, "generic"), (1, "direct")):
        line = lines[key]
        assert (line["score"], line["judge_score"], line["capped_by_check"]) == (3, None, False)
    arms = result.summary["arms"]
    assert (arms["generic"]["capped_by_check"], arms["direct"]["capped_by_check"]) == (1, 0)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "1 capped by a deterministic check" in report


def test_detection_by_the_judge_alone_ignores_the_checks_caps() -> None:
    from scribe_service.evaluation.perturbation import PairResult, detection, detection_by_judge

    results = [
        # The check caught the twin: detected, though the judge gave both sides 3.
        PairResult("r1", "k", "ok", 1.0, 1 / 3, judge_corrupted=1.0),
        # The judge caught it itself.
        PairResult("r2", "k", "ok", 1.0, 0.0),
        PairResult("r3", "k", "failed"),
    ]
    assert detection(results) == 1.0
    assert detection_by_judge(results) == 0.5
