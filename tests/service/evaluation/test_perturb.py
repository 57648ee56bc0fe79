"""Controlled corruptions: each changes only its recorded span, leaves the step parseable, is
deterministic under a seed, returns None when the step offers nothing to corrupt, and makes
the error it names (checked with the deterministic checks where one applies)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from scribe_service.evaluation.perturb import (
    CORRUPTIONS,
    Corruption,
    PerturbContext,
    StepContent,
    answer_swap,
    arithmetic_operand,
    arithmetic_result,
    corrupt,
    skipped_case,
    tool_argument_contradiction,
    tool_argument_schema,
    unsupported_fact,
)
from scribe_service.pipeline.checks import (
    CheckInput,
    CheckToolCall,
    arithmetic_claims,
    check_answer_grounded,
    check_tool_arguments,
    final_answer,
)

SEEDS = range(8)

MATH = StepContent(
    "Step 1: She buys 3 * 4 = 12 apples.\nStep 2: Then 12 + 5 = 17, and 17 - 2 = 15.\n"
    "The answer is 15."
)
BOOK: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "book_hotel",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "nights": {"type": "integer", "minimum": 1},
                "room": {"type": "string", "enum": ["single", "double", "suite"]},
                "order_id": {"type": "string"},
            },
            "required": ["city", "nights"],
            "additionalProperties": False,
        },
    },
}
TOOL_CONTEXT = PerturbContext(
    task="Please book a double room in Lyon for 3 nights; my order is ORD-4417.",
    tools=[BOOK],
    evidence=["Hotels in Lyon: Hotel Bellecour, Villa Florentine."],
)
ARGS = '{"city": "Lyon", "nights": 3, "room": "double", "order_id": "ORD-4417"}'
TOOL_STEP = StepContent("I will book it now.", (CheckToolCall("book_hotel", ARGS),))
SEARCH_CONTEXT = PerturbContext(
    task="Which city hosts the headquarters of Interpol?",
    evidence=[
        "Interpol is headquartered in Lyon, France, since 1989.",
        "Europol is based in The Hague. Interpol was founded in Vienna.",
    ],
)
SEARCH_STEP = StepContent(
    "The results say Interpol moved to Lyon. Its general secretariat is there.\n"
    "<answer>Lyon</answer>"
)
CASES = StepContent(
    "We split on the sign of x.\nCase 1: x > 0, so |x| = x.\nCase 2: x < 0, so |x| = -x.\n"
    "Case 3: x = 0, trivially.\n\nIn every case the identity holds."
)
BULLETS = StepContent("Two cases:\n- If n is even, n^2 is even.\n- If n is odd, n^2 is odd.\n")

APPLICABLE = [
    (arithmetic_result, MATH, PerturbContext()),
    (arithmetic_operand, MATH, PerturbContext()),
    (tool_argument_contradiction, TOOL_STEP, TOOL_CONTEXT),
    (tool_argument_schema, TOOL_STEP, TOOL_CONTEXT),
    (answer_swap, SEARCH_STEP, SEARCH_CONTEXT),
    (unsupported_fact, SEARCH_STEP, SEARCH_CONTEXT),
    (skipped_case, CASES, PerturbContext()),
    (skipped_case, BULLETS, PerturbContext()),
]
IDS = [f"{fn.__name__}-{i}" for i, (fn, _, _) in enumerate(APPLICABLE)]


def _target(step: StepContent, corruption: Corruption) -> str:
    if corruption.call_index is None:
        return step.text
    arguments = step.tool_calls[corruption.call_index].arguments
    assert isinstance(arguments, str)
    return arguments


@pytest.mark.parametrize(("fn", "step", "context"), APPLICABLE, ids=IDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_corruption_changes_only_its_span(
    fn: Any, step: StepContent, context: PerturbContext, seed: int
) -> None:
    corruption = fn(step, context, seed)
    assert corruption is not None and corruption.kind == fn.__name__
    original = _target(step, corruption)
    start, end = corruption.span
    assert corruption.original == original
    assert corruption.corrupted != original
    assert corruption.corrupted == original[:start] + corruption.replacement + original[end:]
    # Nothing outside the span moved: the common prefix and suffix reach the span.
    prefix = len(_common_prefix(original, corruption.corrupted))
    suffix = len(_common_prefix(original[::-1], corruption.corrupted[::-1]))
    assert prefix >= start and suffix >= len(original) - end
    # The corrupted step applies cleanly and everything else about the step is unchanged.
    changed = corruption.apply(step)
    if corruption.call_index is None:
        assert changed.text == corruption.corrupted and changed.tool_calls == step.tool_calls
    else:
        assert changed.text == step.text
        assert json.loads(str(changed.tool_calls[corruption.call_index].arguments)) is not None


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


@pytest.mark.parametrize(("fn", "step", "context"), APPLICABLE, ids=IDS)
def test_a_corruption_is_deterministic_under_a_seed(
    fn: Any, step: StepContent, context: PerturbContext
) -> None:
    runs = {seed: fn(step, context, seed) for seed in SEEDS}
    assert all(fn(step, context, seed) == runs[seed] for seed in SEEDS)
    if fn is not skipped_case or step is CASES:  # two bullets leave little room for variety
        assert len({c.corrupted for c in runs.values()}) > 1, "the seed never changes anything"


@pytest.mark.parametrize(
    ("fn", "step", "context"),
    [
        (arithmetic_result, StepContent("No computation in this step."), PerturbContext()),
        (arithmetic_result, StepContent("So x + 3 = 5 and 2x = 4."), PerturbContext()),
        (arithmetic_result, StepContent("Wrong already: 3 * 4 = 13."), PerturbContext()),
        (arithmetic_operand, StepContent("Only a number: 42."), PerturbContext()),
        (arithmetic_operand, StepContent("Part of more: 2 + 3 * 4 = 14"), PerturbContext()),
        (tool_argument_contradiction, StepContent("No call."), TOOL_CONTEXT),
        (
            tool_argument_contradiction,  # the user never stated these values
            StepContent("", (CheckToolCall("book_hotel", '{"city": "Nice", "nights": 9}'),)),
            TOOL_CONTEXT,
        ),
        (tool_argument_schema, TOOL_STEP, PerturbContext(task=TOOL_CONTEXT.task)),  # no tools
        (
            tool_argument_schema,
            StepContent("", (CheckToolCall("book_hotel", "not json"),)),
            TOOL_CONTEXT,
        ),
        (answer_swap, StepContent("Interpol is in Lyon."), SEARCH_CONTEXT),  # no final answer
        (answer_swap, SEARCH_STEP, PerturbContext()),  # no evidence to swap from
        (unsupported_fact, StepContent("it is there."), SEARCH_CONTEXT),  # no entity
        (skipped_case, StepContent("Case 1: only one case here."), PerturbContext()),
        (skipped_case, MATH, PerturbContext()),
    ],
)
def test_none_when_the_step_offers_nothing_to_corrupt(
    fn: Any, step: StepContent, context: PerturbContext
) -> None:
    assert fn(step, context, 0) is None


@pytest.mark.parametrize("seed", SEEDS)
def test_arithmetic_corruptions_make_a_correct_claim_wrong(seed: int) -> None:
    for fn in (arithmetic_result, arithmetic_operand):
        corruption = fn(MATH, PerturbContext(), seed)
        assert corruption is not None
        assert all(c.holds for c in arithmetic_claims(MATH.text))
        broken = [c for c in arithmetic_claims(corruption.corrupted) if not c.holds]
        assert len(broken) == 1
        assert re.fullmatch(r"\d+", corruption.replacement)
        assert final_answer(corruption.corrupted) == "15"  # the answer is untouched


def test_arithmetic_result_keeps_the_numbers_format() -> None:
    step = StepContent("In total 1,200 + 3,400 = 4,600 and 1.25 * 2 = 2.50.")
    for seed in SEEDS:
        corruption = arithmetic_result(step, PerturbContext(), seed)
        assert corruption is not None
        assert re.fullmatch(r"\d,\d{3}|\d\.\d{2}", corruption.replacement), corruption


@pytest.mark.parametrize("seed", SEEDS)
def test_tool_argument_contradiction_contradicts_the_user(seed: int) -> None:
    corruption = tool_argument_contradiction(TOOL_STEP, TOOL_CONTEXT, seed)
    assert corruption is not None and corruption.call_index == 0
    before, after = json.loads(ARGS), json.loads(corruption.corrupted)
    (key,) = [k for k in before if before[k] != after[k]]
    assert type(after[key]) is type(before[key])
    assert str(before[key]) in TOOL_CONTEXT.task
    if key == "room":  # an enum stays inside the enum: the contradiction is not a type error
        assert after[key] in {"single", "suite"}
    assert str(after[key]) not in TOOL_CONTEXT.task


def test_tool_argument_contradiction_can_swap_in_another_entity() -> None:
    step = StepContent("", (CheckToolCall("book_hotel", '{"city": "Lyon", "nights": 3}'),))
    context = PerturbContext(task="A room in Lyon, not Paris, please.", tools=[BOOK])
    cities = set()
    for seed in SEEDS:
        corruption = tool_argument_contradiction(step, context, seed)
        assert corruption is not None
        cities.add(json.loads(corruption.corrupted)["city"])
    assert "Paris" in cities and "Lyon" not in cities


SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {"query_list": {"type": "array", "items": {"type": "string"}}},
            "required": ["query_list"],
        },
    },
}
QUERY_CONTEXT = PerturbContext(
    task="Which Australian city founded in 1838 has a school named after a London one?",
    tools=[SEARCH_TOOL],
    evidence=["Melbourne was founded in 1835. Adelaide was founded in 1836."],
)


@pytest.mark.parametrize("seed", SEEDS)
def test_tool_argument_contradiction_changes_what_the_user_stated_inside_a_query(
    seed: int,
) -> None:
    """A search query restates the user's facts in free text: one of them becomes another,
    and the arguments keep their JSON shape."""
    queries = ["Australian city founded 1838 school", 'school named after "London" school']
    step = StepContent("", (CheckToolCall("search", json.dumps({"query_list": queries})),))
    corruption = tool_argument_contradiction(step, QUERY_CONTEXT, seed)
    assert corruption is not None and corruption.call_index == 0
    after = json.loads(corruption.corrupted)["query_list"]
    assert len(after) == len(queries) and all(isinstance(q, str) for q in after)
    changed = [(b, a) for b, a in zip(queries, after, strict=True) if b != a]
    assert len(changed) == 1
    before_words, after_words = changed[0][0].split(), changed[0][1].split()
    gone = [w.strip('"') for w in before_words if w not in after_words]
    assert gone and all(word in QUERY_CONTEXT.task for word in gone)
    # Another value: a changed digit, or another entity of the conversation (the user's own
    # "Australian" in place of their "London" contradicts them too).
    assert corruption.replacement not in gone and corruption.replacement in changed[0][1]


def test_tool_argument_contradiction_leaves_a_query_without_the_users_facts() -> None:
    arguments = json.dumps({"query_list": ["boarding schools named after other schools"]})
    step = StepContent("", (CheckToolCall("search", arguments),))
    assert tool_argument_contradiction(step, QUERY_CONTEXT, 0) is None


def test_a_question_word_is_never_the_swapped_in_entity() -> None:
    step = StepContent("", (CheckToolCall("book_hotel", '{"city": "Lyon", "nights": 3}'),))
    context = PerturbContext(task="Will it be cheaper in Lyon? Which room, please?", tools=[BOOK])
    for seed in SEEDS:
        corruption = tool_argument_contradiction(step, context, seed)
        assert corruption is None or json.loads(corruption.corrupted)["city"] not in {
            "Will",
            "Which",
        }


@pytest.mark.parametrize("seed", SEEDS)
def test_tool_argument_schema_breaks_the_schema_and_keeps_json(seed: int) -> None:
    corruption = tool_argument_schema(TOOL_STEP, TOOL_CONTEXT, seed)
    assert corruption is not None
    assert isinstance(json.loads(corruption.corrupted), dict)
    inp = CheckInput(
        text="", tool_calls=[CheckToolCall("book_hotel", corruption.corrupted)], tools=[BOOK]
    )
    assert [f.failure_mode for f in check_tool_arguments(inp)] == ["schema_violation"]
    original = CheckInput(text="", tool_calls=TOOL_STEP.tool_calls, tools=[BOOK])
    assert check_tool_arguments(original) == []


def test_tool_argument_schema_covers_every_kind_of_break() -> None:
    details = {tool_argument_schema(TOOL_STEP, TOOL_CONTEXT, s).detail for s in range(40)}  # type: ignore[union-attr]
    assert any("->" in d for d in details)  # wrong type
    assert any("required" in d for d in details)
    assert any("extra property" in d for d in details)


def test_removing_the_only_argument_leaves_an_empty_object() -> None:
    schema = {"type": "object", "properties": {"q": {}}, "required": ["q"]}
    tool = {"type": "function", "function": {"name": "search", "parameters": schema}}
    step = StepContent("", (CheckToolCall("search", '{"q": "Lyon"}'),))
    corruption = tool_argument_schema(step, PerturbContext(tools=[tool]), 0)
    assert corruption is not None and json.loads(corruption.corrupted) == {}


@pytest.mark.parametrize("seed", SEEDS)
def test_answer_swap_uses_another_entity_of_the_evidence(seed: int) -> None:
    corruption = answer_swap(SEARCH_STEP, SEARCH_CONTEXT, seed)
    assert corruption is not None
    new = final_answer(corruption.corrupted)
    assert new == corruption.replacement and new != "Lyon"
    assert new in "\n".join(SEARCH_CONTEXT.evidence)


def test_answer_swap_swaps_a_number_for_a_number() -> None:
    step = StepContent("It moved in <answer>1989</answer>")
    context = PerturbContext(evidence=["Moved in 1989 with 1,200 staff; opened 2004."])
    swapped = {answer_swap(step, context, s).replacement for s in SEEDS}  # type: ignore[union-attr]
    assert swapped == {"1,200", "2004"}


@pytest.mark.parametrize("seed", SEEDS)
def test_unsupported_fact_is_absent_from_the_evidence(seed: int) -> None:
    corruption = unsupported_fact(SEARCH_STEP, SEARCH_CONTEXT, seed)
    assert corruption is not None
    start, end = corruption.span
    assert start == end and corruption.replacement.startswith(" ")
    year = re.search(r"\d{4}", corruption.replacement)
    assert year and year.group(0) not in " ".join([*SEARCH_CONTEXT.evidence, SEARCH_STEP.text])
    assert final_answer(corruption.corrupted) == "Lyon"  # inserted outside the answer
    evidence = list(SEARCH_CONTEXT.evidence)
    assert check_answer_grounded(CheckInput(corruption.corrupted, evidence=evidence)) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_skipped_case_removes_exactly_one_case(seed: int) -> None:
    corruption = skipped_case(CASES, PerturbContext(), seed)
    assert corruption is not None and corruption.replacement == ""
    before = re.findall(r"Case \d", CASES.text)
    after = re.findall(r"Case \d", corruption.corrupted)
    assert len(after) == len(before) - 1
    assert corruption.corrupted.endswith("In every case the identity holds.")


def test_corrupt_applies_every_kind_that_fits() -> None:
    kinds = [c.kind for c in corrupt(MATH, PerturbContext(), 0)]
    assert kinds == ["arithmetic_result", "arithmetic_operand"]
    tool_kinds = [c.kind for c in corrupt(TOOL_STEP, TOOL_CONTEXT, 0)]
    assert tool_kinds == ["tool_argument_contradiction", "tool_argument_schema"]
    assert set(CORRUPTIONS) == {
        "arithmetic_result",
        "arithmetic_operand",
        "tool_argument_contradiction",
        "tool_argument_schema",
        "answer_swap",
        "unsupported_fact",
        "skipped_case",
    }
