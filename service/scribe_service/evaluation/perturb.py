"""Controlled corruptions of a correct step, for measuring whether a reward notices errors.

Each corruption is a pure function `(step, context, seed) -> Corruption | None`: None when the
step offers nothing of its kind to corrupt. A `Corruption` changes exactly one span of one
target (the step's text, or one tool call's JSON arguments) and records it, so the corrupted
version differs from the original only where intended and still parses (the arguments stay
valid JSON, the answer stays extractable). The same seed gives the same corruption.

Kinds:

* `arithmetic_result` / `arithmetic_operand`: change the result, or one operand, of a correct
  `a op b = c` claim so that it no longer holds.
* `tool_argument_contradiction`: replace an argument value that the user's text states with a
  different value of the same type; failing that, a number or entity the user stated inside a
  free-text argument (a search query) with another.
* `tool_argument_schema`: break the tool's schema (wrong type, missing required property, or an
  extra property where `additionalProperties` is false), keeping the JSON valid.
* `answer_swap`: replace the final answer with another entity (or number) from the evidence.
* `unsupported_fact`: insert a claimed fact about an entity of the step whose value appears
  nowhere in the evidence.
* `skipped_case`: remove one case of an enumerated case analysis.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from scribe_service.pipeline.checks import (
    CheckInput,
    CheckToolCall,
    arithmetic_claims,
    check_tool_arguments,
    final_answer_span,
)

__all__ = [
    "CORRUPTIONS",
    "Corruption",
    "PerturbContext",
    "StepContent",
    "answer_swap",
    "arithmetic_operand",
    "arithmetic_result",
    "corrupt",
    "skipped_case",
    "tool_argument_contradiction",
    "tool_argument_schema",
    "unsupported_fact",
]


@dataclass(frozen=True)
class StepContent:
    text: str
    tool_calls: Sequence[CheckToolCall] = ()


@dataclass(frozen=True)
class PerturbContext:
    task: str = ""
    """The user's text: what a contradicting argument contradicts."""
    evidence: Sequence[str] = ()
    """Tool results seen before and in this step."""
    tools: Sequence[Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class Corruption:
    kind: str
    original: str
    """The target before: the step's text, or the arguments of tool call `call_index`."""
    corrupted: str
    span: tuple[int, int]
    """The replaced stretch of `original`; `corrupted` = before + `replacement` + after."""
    replacement: str
    call_index: int | None = None
    detail: str = ""

    def apply(self, step: StepContent) -> StepContent:
        """The corrupted step: the same step with this one target changed."""
        if self.call_index is None:
            return replace(step, text=self.corrupted)
        calls = list(step.tool_calls)
        calls[self.call_index] = replace(calls[self.call_index], arguments=self.corrupted)
        return replace(step, tool_calls=tuple(calls))


Corrupter = Callable[[StepContent, PerturbContext, int], "Corruption | None"]


def _rng(kind: str, seed: int, target: str) -> random.Random:
    # A string seed is hashed with SHA-512, so the choice does not depend on PYTHONHASHSEED.
    return random.Random(f"{kind}\0{seed}\0{target}")


def _splice(
    kind: str, original: str, span: tuple[int, int], new: str, detail: str, call: int | None = None
) -> Corruption:
    corrupted = original[: span[0]] + new + original[span[1] :]
    return Corruption(kind, original, corrupted, span, new, call, detail)


# --- arithmetic ------------------------------------------------------------------------------

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_BINARY_CLAIM = re.compile(
    rf"(?P<a>{_NUM})\s*(?P<op>[+\-*/×·÷−]|\\times|\\cdot|\\div)\s*(?P<b>{_NUM})\s*=\s*(?P<c>{_NUM})"
)
# Glued to a word, or continuing an expression: then `a op b` is not the whole left side.
_BEFORE_OPERAND = re.compile(r"(?:[\w.,\\]|[+\-*/×·÷−^(=]\s*)$")
_AFTER_RESULT = re.compile(r"^(?:[\w^(%]|\.\d|,\d|\s*[+\-*/×·÷−^=])")


def _simple_claims(text: str) -> list[re.Match[str]]:
    """`a op b = c` claims that stand alone (not part of a longer expression) and hold."""
    found = []
    for match in _BINARY_CLAIM.finditer(text):
        if _BEFORE_OPERAND.search(text[: match.start()]):
            continue
        if _AFTER_RESULT.match(text[match.end() :]):
            continue
        claims = arithmetic_claims(match.group(0))
        if len(claims) == 1 and claims[0].holds:
            found.append(match)
    return found


def _format_like(value: Fraction, like: str) -> str:
    decimals = len(like.split(".")[1]) if "." in like else 0
    text = f"{float(value):.{decimals}f}" if decimals else str(int(value))
    if "," in like:
        whole, _, frac = text.partition(".")
        text = f"{int(whole):,}" + (f".{frac}" if frac else "")
    return text


def _shifted(number: str, rng: random.Random) -> list[str]:
    """Other numbers written like `number`, in a seed-dependent order, all non-negative."""
    decimals = len(number.split(".")[1]) if "." in number else 0
    unit = Fraction(1, 10**decimals)
    value = Fraction(number.replace(",", ""))
    steps = [1, 2, 3, 4, 5, 10]
    rng.shuffle(steps)
    out = []
    for step in steps:
        for sign in rng.sample([1, -1], 2):
            candidate = value + sign * step * unit
            if candidate >= 0 and candidate != value:
                out.append(_format_like(candidate, number))
    return out


def _arithmetic(
    step: StepContent, seed: int, kind: str, groups: Sequence[str]
) -> Corruption | None:
    rng = _rng(kind, seed, step.text)
    claims = _simple_claims(step.text)
    rng.shuffle(claims)
    for match in claims:
        group = rng.choice(list(groups))
        start, end = match.span(group)
        for new in _shifted(match.group(group), rng):
            claim = match.group(0)
            local = (start - match.start(), end - match.start())
            changed = claim[: local[0]] + new + claim[local[1] :]
            verdict = arithmetic_claims(changed)
            if len(verdict) == 1 and not verdict[0].holds:
                detail = f"{claim!r} -> {changed!r}"
                return _splice(kind, step.text, (start, end), new, detail)
    return None


def arithmetic_result(
    step: StepContent,
    context: PerturbContext,  # noqa: ARG001 - every corruption takes the same arguments
    seed: int,
) -> Corruption | None:
    """Change the result `c` of one correct `a op b = c` claim."""
    return _arithmetic(step, seed, "arithmetic_result", ["c"])


def arithmetic_operand(
    step: StepContent,
    context: PerturbContext,  # noqa: ARG001 - every corruption takes the same arguments
    seed: int,
) -> Corruption | None:
    """Change one operand of one correct `a op b = c` claim, leaving its result as it was."""
    return _arithmetic(step, seed, "arithmetic_operand", ["a", "b"])


# --- tool calls ------------------------------------------------------------------------------


def _raw_arguments(call: CheckToolCall) -> str:
    if isinstance(call.arguments, str):
        return call.arguments
    return json.dumps(dict(call.arguments), ensure_ascii=False)


def _parsed(raw: str) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _value_spans(raw: str) -> dict[str, tuple[int, int, int]]:
    """Top-level key -> (pair start, value start, value end) in the raw JSON object text."""
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int, int]] = {}
    i = raw.index("{") + 1
    while True:
        i = _skip_space(raw, i)
        if raw[i] != '"':
            return spans
        pair_start = i
        key, i = decoder.raw_decode(raw, i)
        i = _skip_space(raw, i) + 1  # the colon
        value_start = _skip_space(raw, i)
        _, value_end = decoder.raw_decode(raw, value_start)
        spans[key] = (pair_start, value_start, value_end)
        i = _skip_space(raw, value_end)
        if raw[i] != ",":
            return spans
        i += 1


def _skip_space(raw: str, i: int) -> int:
    while raw[i] in " \t\r\n":
        i += 1
    return i


def _schemas(context: PerturbContext) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for tool in context.tools or ():
        spec = tool.get("function", tool)
        if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
            parameters = spec.get("parameters")
            out[spec["name"]] = parameters if isinstance(parameters, Mapping) else {}
    return out


def _normal(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _mentions(text: str, value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    shown = _normal(str(value))
    return bool(shown) and f" {shown} " in f" {_normal(text)} "


def _contradicting(
    value: object, prop: Mapping[str, Any], others: Sequence[str], rng: random.Random
) -> object | None:
    """A different value of the same type: another enum member, a shifted number, a changed
    digit in an identifier, or another entity of the conversation."""
    options = [v for v in prop.get("enum", ()) if v != value and type(v) is type(value)]
    if options:
        return rng.choice(options)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value + rng.choice([1, 2, 3, 5, 10]) * rng.choice([1, -1])
    if isinstance(value, str):
        digits = [i for i, ch in enumerate(value) if ch.isdigit()]
        if digits:
            i = rng.choice(digits)
            new_digit = rng.choice([d for d in "0123456789" if d != value[i]])
            return value[:i] + new_digit + value[i + 1 :]
        names = sorted({o for o in others if _normal(o) != _normal(value)})
        if names:
            return rng.choice(names)
    return None


def tool_argument_contradiction(
    step: StepContent, context: PerturbContext, seed: int
) -> Corruption | None:
    """Replace an argument value that the user stated with a different value of the same type."""
    schemas = _schemas(context)
    for index, call in enumerate(step.tool_calls):
        raw = _raw_arguments(call)
        args = _parsed(raw)
        if not args:
            continue
        rng = _rng("tool_argument_contradiction", seed, raw)
        properties = schemas.get(call.name, {}).get("properties", {})
        keys = [k for k, v in args.items() if _mentions(context.task, v)]
        rng.shuffle(keys)
        others = _entities("\n".join([context.task, *context.evidence]))
        for key in keys:
            prop = properties.get(key, {}) if isinstance(properties, Mapping) else {}
            new = _contradicting(args[key], prop, others, rng)
            if new is None or _normal(str(new)) == _normal(str(args[key])):
                continue
            _, start, end = _value_spans(raw)[key]
            encoded = json.dumps(new, ensure_ascii=False)
            detail = f"{call.name}.{key}: {args[key]!r} (as the user said) -> {new!r}"
            return _splice("tool_argument_contradiction", raw, (start, end), encoded, detail, index)
        embedded = _embedded_contradiction(call.name, raw, args, context, others, rng)
        if embedded is not None:
            span, replacement, detail = embedded
            return _splice("tool_argument_contradiction", raw, span, replacement, detail, index)
    return None


def _embedded_contradiction(
    name: str,
    raw: str,
    args: Mapping[str, Any],
    context: PerturbContext,
    others: Sequence[str],
    rng: random.Random,
) -> tuple[tuple[int, int], str, str] | None:
    """Inside a free-text argument (a search query, alone or in a list), one number or entity
    the user stated becomes another: "... founded 1838 ..." -> "... founded 1836 ...". The
    span is that mention in the raw JSON, so the arguments stay valid JSON of the same shape."""
    spans = _value_spans(raw)
    stated = sorted(
        {*_NUMBER.findall(context.task), *_entities(context.task)}, key=lambda t: (-len(t), t)
    )
    found: list[tuple[int, int, str]] = []
    for key, value in args.items():
        texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if not any(isinstance(text, str) for text in texts):
            continue
        _, value_start, value_end = spans[key]
        for mention in stated:
            inside = json.dumps(mention, ensure_ascii=False)[1:-1]
            match = re.search(rf"(?<!\w){re.escape(inside)}(?!\w)", raw[value_start:value_end])
            if match is not None:
                found.append((value_start + match.start(), value_start + match.end(), mention))
    rng.shuffle(found)
    for start, end, mention in found:
        new = _contradicting(mention, {}, others, rng)
        if new is None or _normal(str(new)) == _normal(mention):
            continue
        replacement = json.dumps(str(new), ensure_ascii=False)[1:-1]
        detail = f"{name}: {mention!r} (as the user said) -> {new!r} inside a query"
        return (start, end), replacement, detail
    return None


def _wrong_type(kind: str, value: object) -> object | None:
    """A JSON value that is not of type `kind` (None when `kind` is not a simple type)."""
    if kind == "string":
        return 12345
    if kind in ("integer", "number"):
        return str(value)  # the classic slip: a number sent as a string
    if kind == "boolean":
        return "true" if value else "false"
    if kind in ("array", "object"):
        return f"not an {kind}"
    return None


def _schema_breaks(
    raw: str, args: dict[str, Any], schema: Mapping[str, Any]
) -> list[tuple[tuple[int, int], str, str]]:
    """Every way to break `schema` here: (span in raw, replacement, what it does)."""
    spans = _value_spans(raw)
    properties = schema.get("properties", {})
    breaks = []
    for key, prop in properties.items() if isinstance(properties, Mapping) else ():
        kind = prop.get("type") if isinstance(prop, Mapping) else None
        wrong = _wrong_type(kind, args.get(key)) if isinstance(kind, str) else None
        if key in args and wrong is not None:
            _, start, end = spans[key]
            new = json.dumps(wrong)
            breaks.append(((start, end), new, f"{key}: {kind} -> {new}"))
    for key in schema.get("required", ()):
        if key in args:
            breaks.append((_pair_span(spans, key), "", f"required {key!r} removed"))
    if schema.get("additionalProperties") is False:
        extra = "unexpected_option" if "unexpected_option" not in args else "unexpected_option_2"
        at = spans[list(args)[-1]][2] if args else raw.rindex("}")
        pair = f'{", " if args else ""}"{extra}": true'
        breaks.append(((at, at), pair, f"extra property {extra!r}"))
    return breaks


def _pair_span(spans: dict[str, tuple[int, int, int]], key: str) -> tuple[int, int]:
    """The key-value pair with one neighbouring comma, so what is left is still an object."""
    keys = list(spans)
    position = keys.index(key)
    pair_start, _, value_end = spans[key]
    if position + 1 < len(keys):
        return pair_start, spans[keys[position + 1]][0]
    if position > 0:
        return spans[keys[position - 1]][2], value_end
    return pair_start, value_end


def _violates(name: str, arguments: str, context: PerturbContext) -> bool:
    """Whether the deterministic check, reading the same schema, rejects these arguments."""
    call = CheckToolCall(name, arguments)
    return bool(check_tool_arguments(CheckInput(text="", tool_calls=[call], tools=context.tools)))


def tool_argument_schema(
    step: StepContent, context: PerturbContext, seed: int
) -> Corruption | None:
    """Break the tool's schema in one place: a wrong type, a missing required property, or an
    extra property where the schema forbids them. The arguments stay valid JSON."""
    schemas = _schemas(context)
    for index, call in enumerate(step.tool_calls):
        raw = _raw_arguments(call)
        args = _parsed(raw)
        schema = schemas.get(call.name)
        if args is None or not schema:
            continue
        breaks = [
            (span, new, what)
            for span, new, what in _schema_breaks(raw, args, schema)
            if _violates(call.name, raw[: span[0]] + new + raw[span[1] :], context)
        ]
        if breaks:
            span, new, what = _rng("tool_argument_schema", seed, raw).choice(breaks)
            return _splice("tool_argument_schema", raw, span, new, f"{call.name}: {what}", index)
    return None


# --- answers and facts -----------------------------------------------------------------------

_ENTITY = re.compile(r"\b[A-Z][\w'’-]+(?:\s+(?:of|the|de|von|van|and)?\s*[A-Z][\w'’-]+)*")
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?![\w])")
_SENTENCE_STARTERS = frozenset(
    "The A An In On It This That He She They We I As At By For From Its His Her Their "
    "However Yes No So Then Also Finally First Second Third Next Therefore Thus "
    # Question words open the user's own sentences ("Will it rain in Oslo?").
    "Will What Which Who Whom Whose When Where Why How Is Are Was Were Do Does Did Can Could "
    "Should Would Has Have Had Please Find Tell Give".split()
)


def _entities(text: str) -> list[str]:
    found = []
    for match in _ENTITY.finditer(text):
        words = match.group(0).split()
        while words and words[0] in _SENTENCE_STARTERS:
            words = words[1:]
        if words:
            found.append(" ".join(words))
    return found


def answer_swap(step: StepContent, context: PerturbContext, seed: int) -> Corruption | None:
    """Replace the final answer with another entity (a number for a number) from the evidence."""
    span = final_answer_span(step.text)
    if span is None or not context.evidence:
        return None
    answer = step.text[span[0] : span[1]]
    evidence = "\n".join(context.evidence)
    numeric = bool(re.fullmatch(r"[\d,.\s]+", answer))
    pool = _NUMBER.findall(evidence) if numeric else _entities(evidence)
    mine = set(_normal(answer).split())
    candidates = sorted(
        {c for c in pool if _normal(c) and not (set(_normal(c).split()) & mine)}
        if not numeric
        else {c for c in pool if c.replace(",", "") != answer.replace(",", "")}
    )
    if not candidates:
        return None
    new = _rng("answer_swap", seed, step.text).choice(candidates)
    return _splice("answer_swap", step.text, span, new, f"answer {answer!r} -> {new!r}")


_FACTS = (
    "{e} was first documented in {year}.",
    "According to the records, {e} dates back to {year}.",
    "Notably, {e} received a national award in {year}.",
)


def unsupported_fact(step: StepContent, context: PerturbContext, seed: int) -> Corruption | None:
    """Insert, after one sentence, a dated claim about an entity of the step (one the task or
    the evidence names too) whose year appears nowhere in the evidence, the task or the step."""
    known = set(_entities("\n".join([context.task, *context.evidence])))
    entities = sorted(set(_entities(step.text)) & known)
    answer = final_answer_span(step.text) or (0, 0)
    ends = [
        m.end()
        for m in re.finditer(r"[.!?](?=\s|$)", step.text)
        if not answer[0] <= m.end() <= answer[1]
    ]
    if not entities or not ends:
        return None
    rng = _rng("unsupported_fact", seed, step.text)
    seen = " ".join([step.text, context.task, *context.evidence])
    years = [y for y in range(1801, 1991) if str(y) not in seen]
    template = rng.choice(_FACTS)
    fact = template.format(e=rng.choice(entities), year=rng.choice(years))
    at = rng.choice(ends)
    return _splice("unsupported_fact", step.text, (at, at), " " + fact, f"inserted {fact!r}")


# --- case analysis ---------------------------------------------------------------------------

_CASE_MARKER = re.compile(
    r"^[ \t]*(?:[-*•][ \t]*)?(?:\*\*|#{1,6}[ \t]*)?(?:sub)?case[ \t]+(?:\d+|[ivx]+|[a-z])\b"
    r"|^[ \t]*[-*•][ \t]+(?:\*\*)?if\b",
    re.IGNORECASE | re.MULTILINE,
)


def _case_blocks(text: str) -> list[tuple[int, int]]:
    """Spans of the cases of the first enumerated case analysis (at least two cases)."""
    starts = [m.start() for m in _CASE_MARKER.finditer(text)]
    if len(starts) < 2:
        return []
    blocks = []
    for i, start in enumerate(starts):
        if i + 1 < len(starts):
            blocks.append((start, starts[i + 1]))
            continue
        # The last case runs to the next blank line, where the text moves on.
        blank = re.compile(r"\n[ \t]*\n").search(text, start)
        blocks.append((start, blank.start() + 1 if blank else len(text)))
    return blocks


def skipped_case(
    step: StepContent,
    context: PerturbContext,  # noqa: ARG001 - every corruption takes the same arguments
    seed: int,
) -> Corruption | None:
    """Remove one case of an enumerated case analysis ("Case 1: …", "- If …" lines)."""
    blocks = _case_blocks(step.text)
    if not blocks:
        return None
    start, end = _rng("skipped_case", seed, step.text).choice(blocks)
    removed = step.text[start:end].strip()
    return _splice("skipped_case", step.text, (start, end), "", f"removed {removed[:80]!r}")


# --- registry --------------------------------------------------------------------------------

CORRUPTIONS: Mapping[str, Corrupter] = {
    "arithmetic_result": arithmetic_result,
    "arithmetic_operand": arithmetic_operand,
    "tool_argument_contradiction": tool_argument_contradiction,
    "tool_argument_schema": tool_argument_schema,
    "answer_swap": answer_swap,
    "unsupported_fact": unsupported_fact,
    "skipped_case": skipped_case,
}


def corrupt(step: StepContent, context: PerturbContext, seed: int) -> list[Corruption]:
    """Every corruption that applies to the step, one per kind, in registry order."""
    found = (fn(step, context, seed) for fn in CORRUPTIONS.values())
    return [c for c in found if c is not None]
