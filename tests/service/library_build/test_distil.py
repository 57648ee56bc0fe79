"""Distillation against a scripted backend: schema, prompt, repair, retry and failure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scribe_service.library import Prototype
from scribe_service.library_build.distil import (
    COMPACT,
    ClusterBrief,
    DistilFailure,
    Distilled,
    DraftLimits,
    Member,
    distil,
    distil_messages,
    draft_schema,
)
from scribe_service.pipeline.judge import JudgeContextExceeded, JudgeTimeout, Sampling
from support import FakeJudge

pytestmark = pytest.mark.anyio

EXEMPLARS = tuple(f"Sketch the figure and label side {n}" for n in "abcdef")
BRIEF = ClusterBrief(
    key="cluster_0",
    members=(
        Member("Sketch the triangle and label its sides", "A sketch: AB = 3, BC = 4.", 1),
        Member("Sketch the square and label its corners", "Corners A, B, C, D.", -1),
        Member("Sketch the circle", "", None),
    ),
    exemplars=EXEMPLARS,
    steps=7,
    trajectories=3,
)
SAMPLING = Sampling(temperature=0.0, max_tokens=900, seed=0)


def _draft(**changes: Any) -> dict[str, Any]:
    draft: dict[str, Any] = {
        "name": "Figure sketching",
        "domain": "math",
        "usage_context": "When the solver draws the figure the problem describes.",
        "reasoning_pattern": "A careful solver draws every given element and labels it "
        "with the quantities the problem states.",
        "levels": {
            "3": "Every element drawn and labelled correctly.",
            "2": "Correct, with a label missing that is not used later.",
            "1": "An element drawn or labelled wrongly.",
            "0": "The sketch does not match the problem at all.",
        },
        "failure_modes": [
            {
                "id": "wrong_label",
                "description": "A quantity is attached to the wrong element.",
                "max_score": 1,
            }
        ],
    }
    draft.update(changes)
    return draft


def _reply(draft: dict[str, Any]) -> str:
    return json.dumps(draft)


async def test_a_valid_reply_is_a_prototype_with_the_clusters_own_exemplars() -> None:
    judge = FakeJudge(replies=[_reply(_draft())])
    outcome = await distil(judge, BRIEF, sampling=SAMPLING)
    assert isinstance(outcome, Distilled) and outcome.attempts == 1
    prototype = outcome.prototype
    assert prototype.id == "cluster_0" and prototype.exemplars == EXEMPLARS
    assert prototype.levels["1"] == "An element drawn or labelled wrongly."
    assert not prototype.fallback and prototype.checks == ()
    assert judge.schemas == [draft_schema()]
    assert judge.samplings == [SAMPLING]


def test_the_schema_is_derived_from_the_prototype_model() -> None:
    schema = draft_schema(COMPACT)
    mode = schema["properties"]["failure_modes"]["items"]["properties"]
    model = Prototype.model_json_schema()
    assert mode["id"]["pattern"] == "^[a-z][a-z0-9_]{0,39}$"  # the model's, bounded
    assert mode["max_score"]["enum"] == [0, 1, 2]  # the model's ge=0, le=2
    assert schema["properties"]["domain"]["enum"] == model["properties"]["domain"]["enum"]
    assert schema["properties"]["reasoning_pattern"]["minLength"] == 40
    assert schema["properties"]["reasoning_pattern"]["maxLength"] == COMPACT.reasoning_pattern
    assert schema["properties"]["levels"]["required"] == ["3", "2", "1", "0"]
    # What the builder owns is not the model's to write.
    assert not {"id", "exemplars", "fallback"} & set(schema["properties"])
    assert (
        draft_schema(DraftLimits(level=77))["properties"]["levels"]["properties"]["0"]["maxLength"]
        == 77
    )


def test_the_prompt_separates_members_that_went_well_and_badly() -> None:
    system, user = distil_messages(BRIEF)
    assert "Never mention the particular numbers" in system["content"]
    text = user["content"]
    assert "7 steps from 3 trajectories" in text
    good = text.index("judged correct")
    bad = text.index("judged wrong")
    other = text.index("Other steps")
    assert good < text.index("Sketch the triangle") < bad
    assert bad < text.index("Sketch the square") < other < text.index("Sketch the circle")
    assert "Step: A sketch: AB = 3, BC = 4." in text


def test_without_labels_members_are_shown_plainly() -> None:
    brief = ClusterBrief("c", (Member("Sketch it", "drawn", None),), EXEMPLARS, 1, 1)
    text = distil_messages(brief)[1]["content"]
    assert "judged" not in text and "Steps:\n- Subgoal: Sketch it" in text


async def test_mechanical_slips_are_repaired_without_a_retry() -> None:
    draft = _draft(
        id="ignored",
        exemplars=["not the model's to choose"],
        domain=" Math ",
        levels={
            "Level 3": "Every element drawn and labelled.",
            "level_2": "Mostly right, one label off.",
            "1": "An element drawn wrongly.",
            "0": "Nothing matches the problem.",
        },
        failure_modes=[
            {
                "id": "Wrong Label",
                "description": "A quantity on the wrong element.",
                "max_score": "1",
            },
            {
                "id": "wrong-label",
                "description": "Another quantity on the wrong element.",
                "max_score": 0,
            },
        ],
    )
    judge = FakeJudge(replies=["Here you go:\n```json\n" + _reply(draft) + "\n```"])
    outcome = await distil(judge, BRIEF, sampling=SAMPLING)
    assert isinstance(outcome, Distilled) and outcome.attempts == 1
    assert outcome.prototype.failure_mode_ids() == ("wrong_label", "wrong_label_2")
    assert outcome.prototype.failure_modes[0].max_score == 1
    assert outcome.prototype.domain == "math" and outcome.prototype.exemplars == EXEMPLARS


async def test_an_invalid_reply_is_retried_with_its_errors_shown() -> None:
    levels = {"3": "Every element drawn.", "2": "One label off.", "1": "Wrongly drawn."}
    judge = FakeJudge(replies=[_reply(_draft(levels=levels)), _reply(_draft())])
    outcome = await distil(judge, BRIEF, sampling=SAMPLING)
    assert isinstance(outcome, Distilled) and outcome.attempts == 2
    retry = judge.prompts[1]
    assert retry[:2] == judge.prompts[0]
    assert retry[2]["role"] == "assistant" and retry[3]["role"] == "user"
    assert "levels" in retry[3]["content"] and "0, 1, 2, 3" in retry[3]["content"]
    # A greedy retry would repeat itself.
    assert judge.samplings[1].temperature >= 0.5 and judge.samplings[1].seed == 1


async def test_a_cluster_that_never_yields_a_valid_prototype_fails_with_every_reason() -> None:
    bad = [
        "no json at all",
        _reply(_draft(failure_modes=[])),
        _reply(
            _draft(failure_modes=[{"id": "x", "description": "Too high a cap.", "max_score": 3}])
        ),
    ]
    judge = FakeJudge(replies=bad)
    outcome = await distil(judge, BRIEF, sampling=SAMPLING, max_attempts=3)
    assert isinstance(outcome, DistilFailure) and outcome.attempts == 3
    assert "no JSON object" in outcome.errors[0]
    assert "failure_modes" in outcome.errors[1]
    assert "failure_modes.0.max_score" in outcome.errors[2]
    assert len(judge.prompts) == 3


async def test_a_reply_missing_exemplars_for_routing_is_never_written() -> None:
    brief = ClusterBrief("c", BRIEF.members, EXEMPLARS[:4], 4, 2)  # a prototype needs 5
    outcome = await distil(
        FakeJudge(replies=[_reply(_draft())]), brief, sampling=SAMPLING, max_attempts=1
    )
    assert isinstance(outcome, DistilFailure) and "5 exemplars" in outcome.errors[0]


async def test_a_judge_error_no_retry_can_cure_ends_the_cluster_at_once() -> None:
    judge = FakeJudge(replies=[JudgeContextExceeded("too long"), _reply(_draft())])
    outcome = await distil(judge, BRIEF, sampling=SAMPLING)
    assert isinstance(outcome, DistilFailure) and outcome.attempts == 1
    assert "judge_context_exceeded" in outcome.errors[0]


async def test_a_transient_judge_error_uses_up_one_attempt() -> None:
    judge = FakeJudge(replies=[JudgeTimeout("slow"), _reply(_draft())])
    outcome = await distil(judge, BRIEF, sampling=SAMPLING)
    assert isinstance(outcome, Distilled) and outcome.attempts == 2


async def test_names_and_numbers_copied_from_the_members_are_flagged_for_review() -> None:
    brief = ClusterBrief(
        "c",
        (
            Member("Search for the river in Bratislava", "The Danube flows there.", 1),
            Member("Compute 24 * 5", "That is 120 rolls.", 1),
        ),
        EXEMPLARS,
        2,
        2,
    )
    leaky = _draft(
        usage_context="When the agent looks for the Danube or multiplies to get 120.",
        reasoning_pattern="Search. The agent names the river and checks 3 facts; Bratislava is "
        "a city. Results are read in full.",
    )
    outcome = await distil(FakeJudge(replies=[_reply(leaky)]), brief, sampling=SAMPLING)
    assert isinstance(outcome, Distilled)
    # Sentence-initial capitals ("Search", "Results"), one-digit numbers and words the members
    # do not contain are not instances; the entities and the member's result are.
    assert outcome.leaks == ("120", "Bratislava", "Danube")
    clean = await distil(FakeJudge(replies=[_reply(_draft())]), brief, sampling=SAMPLING)
    assert isinstance(clean, Distilled) and clean.leaks == ()
