"""`scribe eval perturb`: which steps are corrupted and how, the pair metrics by hand, and the
suite end to end in-process with the hashed-words embedder and scripted judges: one that
notices a wrong `a op b = c` (detection 1.0) and one that does not (detection 0)."""

from __future__ import annotations

import asyncio
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from scribe_client.protocol import AssistantMessage
from scribe_service.cli import main
from scribe_service.evaluation.arms import StepItem
from scribe_service.evaluation.evaluate import Options as EvalOptions
from scribe_service.evaluation.evaluate import evaluate
from scribe_service.evaluation.perturbation import (
    CORRUPTIONS,
    ORIGINAL,
    Pair,
    PairResult,
    PerturbOptions,
    build_pairs,
    cap_per_kind,
    kind_summary,
    pair_results,
    parse_kinds,
    perturb,
)
from scribe_service.evaluation.records import Record, read_records
from scribe_service.evaluation.runner import EvalError, judgment_key
from scribe_service.library import Library
from scribe_service.pipeline.judge import Completion, Messages, Sampling
from scribe_service.pipeline.retrieve import Route
from scribe_service.pipeline.segment import segment
from scribe_service.settings import Settings
from support import RAR_RUBRIC, FakeEmbedder, judgment_lines

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "eval"
ARITHMETIC = ["arithmetic_result", "arithmetic_operand"]


def routed(library: Library, path: Path) -> tuple[list[Record], list[list[StepItem]]]:
    """Records segmented as the service does, every step routed to the fallback rubric."""
    records = read_records(path)
    route = Route(library.fallback, 0.5, True, library.fallback)
    items = []
    for record in records:
        seg = segment(messages=record.request.messages)
        items.append([StepItem(record.id, record.task, seg, step, route) for step in seg.steps])
    return records, items


def fixture_pairs(library: Library) -> tuple[list[Record], list[Pair]]:
    records, items = routed(library, FIXTURES / "perturb.jsonl")
    return records, build_pairs(records, items, kinds=list(CORRUPTIONS), seed=0)


# --- pairs ---------------------------------------------------------------------------------


def test_labelled_records_give_their_correct_steps_unlabelled_ones_every_step(
    library: Library,
) -> None:
    _, pairs = fixture_pairs(library)
    math = {
        (p.original.step.message_index, p.kind) for p in pairs if "math" in p.original.record_id
    }
    # Steps 2 and 3 hold a true claim too ("56 - 6 = 50") but are labelled -1.
    assert math == {(1, "arithmetic_result"), (1, "arithmetic_operand")}
    agent = {(p.original.step.index, p.kind) for p in pairs if "agent" in p.original.record_id}
    assert {index for index, _ in agent} == {0, 1}
    assert {kind for _, kind in agent} >= {
        "tool_argument_contradiction", "tool_argument_schema", "answer_swap",
        "arithmetic_result", "unsupported_fact",
    }  # fmt: skip


def test_the_twin_differs_from_the_original_only_where_corrupted(library: Library) -> None:
    records, pairs = fixture_pairs(library)
    by_id = {r.id: r for r in records}
    for pair in pairs:
        before, after = pair.original.step, pair.corrupted.step
        assert pair.corrupted.route is pair.original.route
        assert pair.corrupted.segmented is pair.original.segmented  # same history
        for field in ("index", "subgoal", "message_index", "observation", "history_end"):
            assert getattr(after, field) == getattr(before, field), field
        index = pair.corruption.call_index
        if index is None:
            assert after.tool_calls == before.tool_calls
            assert after.prose == pair.corruption.corrupted != before.prose
            # In the content, only the corrupted span of the prose changed.
            lead = len(before.prose) - len(before.prose.lstrip())
            start, end = (i - lead for i in pair.corruption.span)
            changed = _changed_region(before.content, after.content)
            assert start <= changed[0] and changed[1] <= end, (pair.kind, changed)
        else:
            assert after.prose == before.prose
            for i, (a, b) in enumerate(zip(before.tool_calls, after.tool_calls, strict=True)):
                assert a.id == b.id and a.function.name == b.function.name
                same = a.function.arguments == b.function.arguments
                assert same is (i != index)
            assert after.tool_calls[index].function.arguments == pair.corruption.corrupted
            lines = [(a == b) for a, b in zip(before.content.splitlines(),
                                              after.content.splitlines(), strict=True)]  # fmt: skip
            assert lines.count(False) == 1
        # Rendered exactly as segmentation renders the corrupted message itself.
        assert after.content == _segmented_again(by_id[pair.original.record_id], after)


def _changed_region(a: str, b: str) -> tuple[int, int]:
    """The stretch of `a` that `b` replaces, after their common prefix and suffix."""
    prefix = 0
    while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(a), len(b)) - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    return prefix, len(a) - suffix


def _segmented_again(record: Record, step: Any) -> str:
    messages = list(record.request.messages or [])
    message = messages[step.message_index]
    assert isinstance(message, AssistantMessage)
    messages[step.message_index] = message.model_copy(
        update={"content": step.prose, "tool_calls": list(step.tool_calls) or None}
    )
    content: str = segment(messages=messages).steps[step.index].content
    return content


def test_pairs_are_seeded(library: Library) -> None:
    records, items = routed(library, FIXTURES / "perturb.jsonl")
    ids = [[p.id for p in build_pairs(records, items, kinds=list(CORRUPTIONS), seed=s)]
           for s in (0, 0, 7)]  # fmt: skip
    assert ids[0] == ids[1] and ids[0] != ids[2]
    only = build_pairs(records, items, kinds=["answer_swap"], seed=0)
    assert [p.kind for p in only] == ["answer_swap"]


def test_per_kind_cap_is_a_seeded_sample_kept_in_order(library: Library) -> None:
    _, pairs = fixture_pairs(library)
    capped = cap_per_kind(pairs, 1, seed=3)
    kinds = [p.kind for p in capped]
    assert len(kinds) == len(set(kinds)) == len({p.kind for p in pairs})
    assert capped == [p for p in pairs if p in capped]  # original order
    assert [p.id for p in cap_per_kind(pairs, 1, seed=3)] == [p.id for p in capped]
    assert cap_per_kind(pairs, None, seed=3) == pairs


def test_unknown_kinds_are_refused() -> None:
    assert parse_kinds(None) == list(CORRUPTIONS)
    assert parse_kinds("answer_swap, arithmetic_result") == ["arithmetic_result", "answer_swap"]
    with pytest.raises(ValueError, match="unknown \\['typo'\\]"):
        parse_kinds("answer_swap,typo")


# --- metrics -------------------------------------------------------------------------------


def test_pair_metrics_by_hand() -> None:
    results = [
        PairResult("r1", "k", "ok", 1.0, 1 / 3),  # detected, drop 2/3
        PairResult("r1", "k", "ok", 2 / 3, 2 / 3),  # a tie: not detected, drop 0
        PairResult("r2", "k", "ok", 1 / 3, 2 / 3),  # scored higher: drop -1/3
        PairResult("r2", "k", "failed"),
        PairResult("r3", "k", "not_judged"),
    ]
    summary = kind_summary(results, n_resamples=200, seed=0)
    assert (summary["n"], summary["failed"], summary["not_judged"], summary["ties"]) == (
        3, 1, 1, 1,
    )  # fmt: skip
    assert summary["detection"]["value"] == pytest.approx(1 / 3)
    assert summary["mean_drop"]["value"] == pytest.approx((2 / 3 - 1 / 3) / 3)
    assert summary["mean_drop_score"]["value"] == pytest.approx(1 / 3)
    assert summary["detection"]["n"] == 3
    lo, hi = summary["detection"]["lo"], summary["detection"]["hi"]
    assert 0 <= lo <= 1 / 3 <= hi <= 1
    assert summary["mean_drop_score"]["lo"] == pytest.approx(3 * summary["mean_drop"]["lo"])
    empty = kind_summary([PairResult("r", "k", "failed")], n_resamples=50, seed=0)
    assert empty["n"] == 0 and empty["detection"]["value"] is None


def test_a_failure_on_either_side_fails_the_pair(library: Library) -> None:
    _, pairs = fixture_pairs(library)
    math = [p for p in pairs if "math" in p.original.record_id]
    assert len(math) == 2
    rid, step = math[0].original.record_id, math[0].original.step.index

    def line(kind: str, status: str, reward: float | None) -> tuple[str, dict[str, Any]]:
        return judgment_key(kind, rid, step, "scribe", "verdict", 0), {
            "status": status, "reward": reward,
        }  # fmt: skip

    lines = dict([line(ORIGINAL, "ok", 1.0), line(math[0].job_kind, "failed", None)])
    results = pair_results(math, lines, "scribe", "verdict")
    assert [r.status for r in results] == ["failed", "not_judged"]
    lines = dict([line(ORIGINAL, "failed", None), line(math[1].job_kind, "ok", 0.0)])
    assert [r.status for r in pair_results(math, lines, "scribe", "verdict")] == [
        "not_judged", "failed",
    ]  # fmt: skip
    lines = dict([line(ORIGINAL, "ok", 1.0), line(math[1].job_kind, "ok", 0.0)])
    assert pair_results(math, lines, "scribe", "verdict")[1] == PairResult(
        rid, math[1].kind, "ok", 1.0, 0.0
    )
    assert pair_results(math, lines, "direct", "verdict")[1].status == "not_judged"


# --- end to end ----------------------------------------------------------------------------

_CLAIM = re.compile(r"(\d+(?:\.\d+)?)\s*([-+*/])\s*(\d+(?:\.\d+)?)\s*=\s*(\d+(?:\.\d+)?)")
_OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}


def _graded_step(messages: Messages) -> str:
    user = messages[-1]["content"]
    return user.split("Step:\n", 1)[1].split("Tool results returned", 1)[0]


def has_wrong_claim(text: str) -> bool:
    for a, op, b, c in _CLAIM.findall(text):
        if _OPS[op](Fraction(a), Fraction(b)) != Fraction(c):
            return True
    return False


class ArithmeticJudge:
    """Scores 1 a step holding a false `a op b = c` claim, 3 any other (when `notices`);
    3 every step otherwise. Writes any rubric asked for; records every call."""

    model = "arithmetic-judge"

    def __init__(self, notices: bool = True) -> None:
        self.notices = notices
        self.calls: list[tuple[str, str]] = []

    def _score(self, kind: str, messages: Messages) -> int:
        step = _graded_step(messages)
        self.calls.append((kind, step))
        return 1 if self.notices and has_wrong_claim(step) else 3

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        await asyncio.sleep(0)
        if "criteria" in schema["properties"]:
            self.calls.append(("rubric", ""))
            return Completion(json.dumps(RAR_RUBRIC))
        score = self._score("verdict", messages)
        return Completion(json.dumps({"rationale": "r", "failure_modes": [], "score": score}))

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        score = self._score("logprob", messages)
        return Completion(str(score), top_logprobs=((str(score), -0.01), ("2", -6.0)))

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


ARMS = ["scribe", "generic", "rar", "direct"]


async def run(out: Path, settings: Settings, judge: ArithmeticJudge, **changes: Any) -> Any:
    base: dict[str, Any] = {
        "data": FIXTURES / "processbench.jsonl",
        "out": out,
        "arms": ARMS,
        "kinds": ARITHMETIC,
        "n_resamples": 50,
        "quiet": True,
    }
    options = PerturbOptions(**{**base, **changes})
    return await perturb(options, settings, embedder=FakeEmbedder(), judge_backend=judge)


@pytest.mark.anyio
async def test_a_judge_that_checks_arithmetic_detects_every_arithmetic_corruption(
    tmp_path: Path, settings: Settings
) -> None:
    judge = ArithmeticJudge()
    result = await run(tmp_path, settings, judge)
    summary = result.summary
    corruptions = [json.loads(x) for x in (tmp_path / "corruptions.jsonl").read_text().splitlines()]
    originals = {(c["record_id"], c["step"]) for c in corruptions}
    assert {c["kind"] for c in corruptions} == set(ARITHMETIC)
    for kind in ARITHMETIC:
        assert summary["pairs"][kind]["judged"] == sum(c["kind"] == kind for c in corruptions) > 2
    for arm in ARMS:
        for kind in ARITHMETIC:
            entry = summary["arms"][arm]["kinds"][kind]
            assert entry["n"] == summary["pairs"][kind]["judged"] and entry["failed"] == 0
            assert entry["detection"]["value"] == 1.0
            assert entry["mean_drop_score"]["value"] == pytest.approx(2.0)
            assert entry["mean_drop"]["value"] == pytest.approx(2 / 3)
    # Each original judged once per arm, shared by its twins; each twin once per arm.
    verdicts = [step for kind, step in judge.calls if kind == "verdict"]
    assert len(verdicts) == len(ARMS) * (len(originals) + len(corruptions))
    assert result.judgments_made == len(verdicts)
    kinds = {line["kind"].split(":")[0] for line in judgment_lines(tmp_path)}
    assert kinds == {"original", "perturb"}
    for name in ("summary.json", "report.md", "judgments.jsonl", "run.json", "corruptions.jsonl"):
        assert (tmp_path / name).is_file(), name
    for png in ("detection.png", "score_drop.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG", png

    def no_constants(name: str) -> None:
        raise AssertionError(f"summary.json holds {name}")

    written = json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_constants)
    assert written["arms"]["direct"]["kinds"]["arithmetic_result"]["detection"]["value"] == 1.0
    report = (tmp_path / "report.md").read_text()
    assert (
        "| arithmetic_result | scribe |" in report and "![detection.png](detection.png)" in report
    )

    # A rerun makes no judge call and gives the same numbers.
    again = ArithmeticJudge()
    second = await run(tmp_path, settings, again)
    assert again.calls == [] and second.judgments_made == 0
    assert second.summary["arms"] == summary["arms"]


@pytest.mark.anyio
async def test_a_judge_blind_to_arithmetic_detects_nothing(
    tmp_path: Path, settings: Settings
) -> None:
    # `direct`: no rubric and no deterministic checks, so the judge alone decides (the
    # scribe arm's arithmetic check would catch these without the judge).
    result = await run(tmp_path, settings, ArithmeticJudge(notices=False), arms=["direct"])
    for kind in ARITHMETIC:
        entry = result.summary["arms"]["direct"]["kinds"][kind]
        assert entry["n"] > 2 and entry["ties"] == entry["n"]
        assert entry["detection"]["value"] == 0.0
        assert entry["mean_drop"]["value"] == 0.0


@pytest.mark.anyio
async def test_logprob_mode_and_per_kind_cap(tmp_path: Path, settings: Settings) -> None:
    judge = ArithmeticJudge()
    logprob = settings.model_copy(update={"judge_mode": "logprob"})
    result = await run(tmp_path, logprob, judge, arms=["scribe", "direct"], per_kind=2)
    assert {kind for kind, _ in judge.calls} == {"logprob"}
    for arm in ("scribe", "direct"):
        for kind in ARITHMETIC:
            entry = result.summary["arms"][arm]["kinds"][kind]
            assert entry["n"] == 2 and entry["detection"]["value"] == 1.0
    assert all(line["mode"] == "logprob" for line in judgment_lines(tmp_path))


def test_the_command_line_refuses_unknown_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", "perturb", str(FIXTURES / "perturb.jsonl"), "--out", str(tmp_path / "o"),
                 "--kinds", "arithmetic_result,typo"])  # fmt: skip
    assert code == 2
    assert "unknown ['typo']" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


# --- reusing an earlier run's judgments of the unchanged steps ------------------------------


async def labels_run(out: Path, settings: Settings, arms: list[str]) -> None:
    options = EvalOptions(command="labels", data=FIXTURES / "processbench.jsonl", out=out,
                          arms=arms, n_resamples=50, quiet=True)  # fmt: skip
    await evaluate(options, settings, embedder=FakeEmbedder(), judge_backend=ArithmeticJudge())


@pytest.mark.anyio
async def test_reuse_takes_the_labels_judgments_of_unchanged_steps(
    tmp_path: Path, settings: Settings
) -> None:
    await labels_run(tmp_path / "labels", settings, ARMS)
    fresh_judge, judge = ArithmeticJudge(), ArithmeticJudge()
    fresh = await run(tmp_path / "fresh", settings, fresh_judge)
    reused = await run(tmp_path / "reused", settings, judge, reuse=(tmp_path / "labels",))

    originals = [x for x in judgment_lines(tmp_path / "fresh") if x["kind"] == ORIGINAL]
    taken = [x for x in judgment_lines(tmp_path / "reused") if "reused_from" in x]
    # Every original of every arm but rar, whose rubric each folder generates anew.
    assert len(taken) == reused.summary["judgments_reused"] == 3 * len(originals) // 4 > 0
    assert {x["arm"] for x in taken} == {"scribe", "generic", "direct"}
    assert {x["kind"] for x in taken} == {ORIGINAL}
    assert {x["reused_from"] for x in taken} == {str(tmp_path / "labels")}
    assert reused.judgments_made == fresh.judgments_made - len(taken)

    def verdicts(judge: ArithmeticJudge) -> int:
        return sum(kind == "verdict" for kind, _ in judge.calls)

    assert verdicts(judge) == verdicts(fresh_judge) - len(taken)
    # The same numbers: the same prompts to the same judge.
    assert reused.summary["arms"] == fresh.summary["arms"]


@pytest.mark.anyio
async def test_reuse_refuses_another_setup_and_takes_only_the_same_route(
    tmp_path: Path, settings: Settings
) -> None:
    await labels_run(tmp_path / "labels", settings, ["scribe"])
    logprob = settings.model_copy(update={"judge_mode": "logprob"})
    with pytest.raises(EvalError, match=r"another setup \(mode: 'verdict', here 'logprob'"):
        await run(tmp_path / "o", logprob, ArithmeticJudge(), reuse=(tmp_path / "labels",))
    assert not (tmp_path / "o" / "run.json").exists()  # refused before the folder is claimed
    with pytest.raises(EvalError, match="not an eval folder"):
        await run(tmp_path / "o", settings, ArithmeticJudge(), reuse=(tmp_path / "nothing",))

    # A line routed otherwise (another library or embedder) is not the same prompt; a torn
    # last line (a run still writing) is skipped, and the source folder is left as it was.
    await run(tmp_path / "fresh", settings, ArithmeticJudge(), arms=["scribe"])
    first = next(x for x in judgment_lines(tmp_path / "fresh") if x["kind"] == ORIGINAL)
    path = tmp_path / "labels" / "judgments.jsonl"
    lines = judgment_lines(tmp_path / "labels")
    for x in lines:
        if (x["record_id"], x["step"]) == (first["record_id"], first["step"]):
            x["prototype_id"] = "elsewhere"
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "labels", "rec'
    path.write_text(text)
    result = await run(tmp_path / "o", settings, ArithmeticJudge(), arms=["scribe"],
                       reuse=(tmp_path / "labels",))  # fmt: skip
    taken = {(x["record_id"], x["step"]) for x in judgment_lines(tmp_path / "o")
             if "reused_from" in x}  # fmt: skip
    originals = {(x["record_id"], x["step"]) for x in judgment_lines(tmp_path / "o")
                 if x["kind"] == ORIGINAL}  # fmt: skip
    assert result.summary["judgments_reused"] == len(taken) > 0
    assert taken == originals - {(first["record_id"], first["step"])}
    assert path.read_text() == text


def test_the_command_line_names_a_reuse_folder_that_is_not_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", "perturb", str(FIXTURES / "processbench.jsonl"), "--out",
                 str(tmp_path / "o"), "--judge-url", "http://127.0.0.1:9/v1",
                 "--reuse", str(tmp_path / "none")])  # fmt: skip
    assert code == 2
    assert "none" in capsys.readouterr().out
