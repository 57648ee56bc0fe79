"""LLM-written subgoals (`--llm-subgoals`): the call, its checks, retries and counted failures,
then a whole build with fakes at the model seams: clusters cut on the model's subgoals,
exemplars (what the serving router compares with) kept on the service's own."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from scribe_service.cli import main
from scribe_service.library import load_library
from scribe_service.library_build import cli as library_cli
from scribe_service.library_build.build import BuildOptions, build_library
from scribe_service.library_build.decompose import BuildStep
from scribe_service.library_build.journal import journal_path
from scribe_service.library_build.refresh import RefreshOptions, refresh_library
from scribe_service.library_build.subgoals import (
    SUBGOAL_MAX_TOKENS,
    subgoal_messages,
    subgoal_schema,
    write_subgoals,
)
from scribe_service.library_build.write import MANIFEST, REPORT_JSON, REPORT_MD
from scribe_service.pipeline.backends.base import Completion, Messages, Sampling
from scribe_service.pipeline.judge_errors import JudgeHTTPError, JudgeTimeout
from scribe_service.pipeline.segment import Step, SubgoalSource
from support import PROTOTYPES, FakeEmbedder, FakeJudge

pytestmark = pytest.mark.anyio

SAMPLING = Sampling(temperature=0.0, max_tokens=SUBGOAL_MAX_TOKENS, seed=0)


def _step(
    content: str, source: SubgoalSource = "derived", task: str = "Which river crosses it?"
) -> BuildStep:
    step = Step(index=0, content=content, subgoal=content, subgoal_source=source)
    return BuildStep("r1", "test", step, None, task)


def _reply(subgoal: str) -> str:
    return json.dumps({"subgoal": subgoal})


async def test_a_derived_subgoal_is_rewritten_and_a_marker_is_not_asked() -> None:
    judge = FakeJudge(replies=[_reply("Find the river that crosses a named city")])
    steps = [_step("Search Bratislava river."), _step("Check the answer.", source="marker")]
    result = await write_subgoals(judge, steps, sampling=SAMPLING, max_attempts=3)

    assert [s.llm_subgoal for s in result.steps] == [
        "Find the river that crosses a named city",
        None,
    ]
    # The service's subgoal is untouched; clustering uses the model's where there is one.
    assert [s.subgoal for s in result.steps] == ["Search Bratislava river.", "Check the answer."]
    assert [s.cluster_subgoal for s in result.steps] == [
        "Find the river that crosses a named city",
        "Check the answer.",
    ]
    assert result.counts.as_report() == {
        "asked": 1,
        "rewritten": 1,
        "kept_on_failure": 0,
        "calls": 1,
        "failures": [],
    }
    [prompt] = judge.prompts
    assert "Which river crosses it?" in prompt[1]["content"]
    assert "Search Bratislava river." in prompt[1]["content"]
    assert "not the instance" in prompt[0]["content"]
    assert judge.schemas == [subgoal_schema()]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("not json", "no JSON object"),
        (json.dumps({"goal": "Find the river of a city"}), 'no "subgoal" string'),
        (_reply("Search"), "too short"),
        (_reply("(1) (2) (3) (4)"), "too short"),
        (_reply("Find the river " + "and its banks " * 10), "more than 100"),
        (_reply("Find the river of the city in 1993 maps"), "copies the step's numbers (1993)"),
    ],
)
async def test_an_unusable_reply_is_retried_with_the_problem_shown(bad: str, problem: str) -> None:
    judge = FakeJudge(replies=[bad, _reply("Find the river that crosses a named city")])
    step = _step("Search Bratislava river 1993.")
    result = await write_subgoals(judge, [step], sampling=SAMPLING, max_attempts=3)

    assert result.steps[0].llm_subgoal == "Find the river that crosses a named city"
    assert result.counts.rewritten == 1 and result.counts.calls == 2
    retry = judge.prompts[1]
    assert retry[-2] == {"role": "assistant", "content": bad}
    assert problem in retry[-1]["content"]
    # A greedy retry would repeat itself: the retry samples, with a seed of its own.
    assert judge.samplings[1].temperature >= 0.5 and judge.samplings[1].seed == 1


async def test_a_step_that_never_gets_a_subgoal_keeps_its_own_and_is_counted() -> None:
    judge = FakeJudge(replies=["nope"] * 3 + [_reply("Look up a fact about a named person")])
    steps = [_step("Search Bratislava river."), _step("Who wrote Hamlet?")]
    result = await write_subgoals(judge, steps, sampling=SAMPLING, max_attempts=3)

    assert result.steps[0].llm_subgoal is None
    assert result.steps[0].cluster_subgoal == "Search Bratislava river."
    assert result.steps[1].llm_subgoal == "Look up a fact about a named person"
    counts = result.counts
    assert (counts.asked, counts.rewritten, counts.kept, counts.calls) == (2, 1, 1, 4)
    [failure] = counts.failures
    assert failure.startswith("r1 step 0: attempt 3:") and "no JSON object" in failure


async def test_judge_errors_a_retry_cannot_cure_end_the_step_at_once() -> None:
    judge = FakeJudge(
        replies=[
            JudgeTimeout("slow"),
            _reply("Find the river that crosses a named city"),
            JudgeHTTPError(400, "bad request"),
        ]
    )
    steps = [_step("Search Bratislava river."), _step("Who wrote Hamlet?")]
    result = await write_subgoals(judge, steps, sampling=SAMPLING, max_attempts=3)

    assert result.steps[0].llm_subgoal == "Find the river that crosses a named city"
    assert result.steps[1].llm_subgoal is None
    assert result.counts.calls == 3 and result.counts.kept == 1
    assert "judge_http" in result.counts.failures[0]


async def test_a_repeated_step_is_asked_once() -> None:
    judge = FakeJudge(replies=[_reply("Find the river that crosses a named city")])
    steps = [_step("Search Bratislava river."), _step("Search Bratislava river.")]
    result = await write_subgoals(judge, steps, sampling=SAMPLING, max_attempts=2)
    assert [s.llm_subgoal for s in result.steps] == ["Find the river that crosses a named city"] * 2
    assert result.counts.asked == 2 and result.counts.rewritten == 2 and result.counts.calls == 1


def test_the_prompt_leaves_out_the_tool_answer() -> None:
    step = BuildStep(
        "r1",
        "test",
        Step(
            index=0,
            content="Search it.",
            subgoal="Search it.",
            subgoal_source="derived",
            observation="SECRET PASSAGE",
        ),
        None,
    )
    text = "\n".join(m["content"] for m in subgoal_messages(step))
    assert "Search it." in text and "SECRET PASSAGE" not in text and "The task" not in text


# --- a whole build ---------------------------------------------------------------------------

# Six steps of one skill, in words that share nothing: no cluster forms on these as written.
LOOKUPS = {
    "Which river crosses Bratislava?": "Find the river of a city named in the question",
    "Checking who wrote Hamlet.": "Find the author of a work named in the question",
    "Ada Lovelace birth year needed.": "Find the birth year of a person named in the question",
    "Tallest mountain in Japan?": "Find the highest peak of a country named in the question",
    "Founding date of Oxford University.": "Find the founding date of a body named in the question",
    "Currency used by Sweden.": "Find the currency of a country named in the question",
}
UNUSABLE = "Spelling bee contest rules."
MARKED = "Step 1: Greet the user warmly"


def _draft() -> str:
    return json.dumps(
        {
            "name": "Entity fact lookup",
            "domain": "search_qa",
            "usage_context": "When a step looks up one fact about an entity the task names.",
            "reasoning_pattern": "A careful agent names the entity and the fact it needs.",
            "levels": {
                "3": "The right fact of the right entity is sought.",
                "2": "The right fact, loosely phrased.",
                "1": "The wrong fact or the wrong entity.",
                "0": "No lookup at all.",
            },
            "failure_modes": [
                {"id": "wrong_entity", "description": "Looks up another entity.", "max_score": 1}
            ],
        }
    )


class SkillJudge(FakeJudge):
    """Answers a subgoal prompt from the step it quotes (nonsense for `UNUSABLE`), and a
    distillation prompt with a valid draft."""

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        self.schemas.append(schema)
        self.prompts.append(messages)
        if "subgoal" not in schema["properties"]:
            return Completion(_draft())
        asked = messages[1]["content"]
        for step, subgoal in LOOKUPS.items():
            if step in asked:
                return Completion(_reply(subgoal))
        return Completion("no idea")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    texts = [*LOOKUPS, UNUSABLE]
    records = []
    for n in range(2):
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Trivia questions."}]
        messages += [{"role": "assistant", "content": t} for t in texts[n::2]]
        messages.append({"role": "assistant", "content": MARKED})
        records.append({"id": f"r{n}", "source": "test", "task": "Trivia.", "messages": messages})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


async def test_a_build_clusters_on_llm_subgoals_and_keeps_service_exemplars(
    data: Path, tmp_path: Path
) -> None:
    judge = SkillJudge()
    options: dict[str, Any] = {"data": data, "threshold": 0.5, "max_attempts": 2}
    plain = await build_library(
        # With the shipped library as base: a build that forms no cluster has nothing else.
        BuildOptions(out=tmp_path / "plain", base=PROTOTYPES, **options),
        backend=judge,
        embedder=FakeEmbedder(),
        shipped=PROTOTYPES,
        min_similarity=0.5,
    )
    # Without the flag: the lookups share no words, so no cluster forms.
    assert plain.report["clusters"] == [] and plain.report["llm_subgoals"] is None

    judge = SkillJudge()
    out = tmp_path / "llm"
    result = await build_library(
        BuildOptions(out=out, llm_subgoals=True, **options),
        backend=judge,
        embedder=FakeEmbedder(),
        shipped=PROTOTYPES,
        min_similarity=0.5,
    )
    assert result.built == ("entity_fact_lookup",)
    library = load_library(out)
    # Exemplars are the service's own subgoals of the members: what it routes at serve time.
    assert set(library.prototypes["entity_fact_lookup"].exemplars) == set(LOOKUPS)
    # The distiller saw the model's skill-level subgoals.
    distil_prompt = judge.prompts[-1][1]["content"]
    shown = [line for line in distil_prompt.splitlines() if line.startswith("- Subgoal: ")]
    assert shown and all(line.startswith("- Subgoal: Find the ") for line in shown)

    report = result.report
    # Seven derived steps asked (the marker step is not); the unusable one is kept, counted.
    assert report["llm_subgoals"]["asked"] == 7
    assert report["llm_subgoals"]["rewritten"] == 6
    assert report["llm_subgoals"]["kept_on_failure"] == 1
    assert report["llm_subgoals"]["calls"] == 6 + 2
    assert report["clusters"][0]["examples"][0].startswith("Find the ")
    # Coverage is the serving router on the service's subgoals: the six lookups now route.
    assert report["coverage"]["routed_to_built"] == round(6 / 9, 4)
    manifest = tomllib.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["parameters"]["llm_subgoals"] is True
    assert json.loads((out / REPORT_JSON).read_text())["llm_subgoals"]["kept_on_failure"] == 1
    assert "LLM subgoals: 6 of 7 derived subgoals rewritten, 1 kept on failure" in (
        out / REPORT_MD
    ).read_text(encoding="utf-8")


def test_the_cli_flag_reaches_the_build_and_its_report(
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def fake_models(settings: Any) -> tuple[FakeEmbedder, SkillJudge]:
        return FakeEmbedder(), SkillJudge()

    # The model seam: everything else (settings, options, build, report) runs as shipped.
    monkeypatch.setattr(library_cli, "_load_models", fake_models)
    monkeypatch.setenv("SCRIBE_MIN_SIMILARITY", "0.5")
    monkeypatch.setenv("SCRIBE_PROTOTYPES_DIR", str(PROTOTYPES))
    out = tmp_path / "lib"
    code = main(["library", "build", str(data), "--out", str(out), "--llm-subgoals"])
    assert code == 0, capsys.readouterr().err
    assert "6 of 7 derived subgoals rewritten, 1 kept on failure" in capsys.readouterr().err
    manifest = tomllib.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["parameters"]["llm_subgoals"] is True
    assert "entity_fact_lookup" in load_library(out).prototypes
    assert not journal_path(out).exists()  # published: nothing left to resume


# --- a refresh -------------------------------------------------------------------------------


def _miss_log(path: Path) -> Path:
    lines = [
        {
            "request_id": f"req-{n}",
            "library_version": "v1",
            "subgoal": text,
            "subgoal_source": "derived",
            "content": text,
        }
        for n, text in enumerate([*LOOKUPS, UNUSABLE])
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


async def test_a_refresh_clusters_misses_on_llm_subgoals(tmp_path: Path) -> None:
    result = await refresh_library(
        RefreshOptions(
            misses=_miss_log(tmp_path / "misses.jsonl"),
            base=PROTOTYPES,
            out=tmp_path / "lib",
            threshold=0.5,
            max_attempts=2,
            llm_subgoals=True,
        ),
        backend=SkillJudge(),
        embedder=FakeEmbedder(),
        # High for the bag-of-words fake: below it shipped exemplars catch some lookups.
        min_similarity=0.8,
    )
    assert result.built == ("entity_fact_lookup",)
    library = load_library(tmp_path / "lib")
    assert set(library.prototypes["entity_fact_lookup"].exemplars) == set(LOOKUPS)
    counts = result.report["llm_subgoals"]
    assert (counts["asked"], counts["rewritten"], counts["kept_on_failure"]) == (7, 6, 1)
    assert result.report["parameters"]["llm_subgoals"] is True


def test_the_refresh_cli_takes_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fake_models(settings: Any) -> tuple[FakeEmbedder, SkillJudge]:
        return FakeEmbedder(), SkillJudge()

    monkeypatch.setattr(library_cli, "_load_models", fake_models)
    monkeypatch.setenv("SCRIBE_MIN_SIMILARITY", "0.8")
    out = tmp_path / "lib"
    misses = _miss_log(tmp_path / "m.jsonl")
    args = ["--misses", str(misses), "--base", str(PROTOTYPES), "--out", str(out), "--llm-subgoals"]
    assert main(["library", "refresh", *args]) == 0, capsys.readouterr().err
    manifest = tomllib.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["parameters"]["llm_subgoals"] is True
    assert "entity_fact_lookup" in load_library(out).prototypes
