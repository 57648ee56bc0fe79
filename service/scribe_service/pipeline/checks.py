"""Deterministic checks: pure functions that catch errors a small judge does not see.

A prototype may declare checks by name (`arithmetic`, `tool_arguments`, `answer_grounded`,
`reference_answer`); all but `answer_grounded` run on every step whatever it declares
(`ALWAYS_RUN`). Each is a function `(CheckInput) -> list[CheckFinding]` that reads only
parsed claims: the `expr = value` claims in the step's text, its tool calls, and its final
answer, set against the request's tool schemas, the evidence and the caller's reference.
Prose such as "(verified: check passed)" is never read as a verdict, so it cannot change a
result. A check that cannot decide (a variable, an unparseable expression, no evidence, a
long free-text answer) stays silent: a finding is a claim that something is wrong, and it
caps the step's score exactly as a judge-reported failure mode does (`source = "check"`).

Caps, chosen to match the prototypes' own failure modes for the same error:

* `arithmetic_error` caps at 1, as `calculation_error` does: a wrong value with the right
  operations is level 1 of arithmetic computation.
* `schema_violation` (arguments that are not a JSON object or break the tool's `parameters`
  schema) caps at 1, as `wrong_type_or_format` / `missing_required_argument` do: the call
  fails or acts on the wrong item.
* `unknown_tool` caps at 0, as `nonexistent_function` does: the call cannot succeed at all.
* `ungrounded_answer` caps at 1, as `unsupported_answer` does: the answer rests on a guess.
* `reference_mismatch` caps at 0, as `mismatch_with_derivation` and `contradicted_by_evidence`
  do: a final answer that contradicts the known correct answer is the wrong answer, and a
  final-answer step has no other progress to credit. The check fires only on a clear
  disagreement, so the hard cap is paid for by its silence elsewhere.

`apply_findings` is the one rule, used by the service and by `scribe eval`, that turns
findings into a capped verdict: the score and, in logprob mode, the expected score are
lowered to the smallest cap, and the findings' ids join the verdict's failure modes.

Reference answers, in detail: the reference (a trainer's ground truth) counts when it is a
short answer (one line, at most 8 words), a JSON array of such answers (any one is correct),
or a solution that ends in `#### x`, `\\boxed{x}` or "The answer is x". Two numbers compare by
value (`0.5` = `\\frac{1}{2}` = `50%`; the shown precision allows rounding). Otherwise the
texts are normalised (case, accents, articles, number and ordinal words) and disagree only
when neither contains the other, they share no content word, and neither is the other's
initials. A formula that does not evaluate, a long answer, a negation ("the answer is not
7"), or an answer that names the reference among others (hedging: the judge's concern) leave
the check silent. Every answer a step states is compared, so a sentence naming the reference
after a wrong answer cannot undo it, and a trailing parenthetical is not part of the answer:
"7 (matches the reference 12)" states 7.

Arithmetic, in detail: a claim is a run of numbers and operators around `=` or `≈` (also
×, ·, ÷, −, `\\times`, `\\cdot`, `\\frac{a}{b}`, `1,000`, `20%`); every link of `a = b = c` is
checked. A side glued to a word or following a phrase word ("half of 20 = 10", "x + 3 = 5")
is not a side. A number shown with d decimals may be the other side rounded or truncated to d
decimals when the exact value needs more; `≈` also allows 2%. A percentage reads both as a
fraction and as its number ("0.2 = 20%", "5/25 * 100 = 20%"); added to a plain number
("100 + 10%") it is ambiguous and silences the claim.

No model, no network, no `eval`: arithmetic is evaluated over a whitelist of `ast` nodes in
exact rational arithmetic (`fractions`), with bounds on input length, exponents and number
size. sympy would parse more notation, but it is a heavy import, its parser is built on
`eval`, and a check that declines what it does not understand loses little.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

import jsonschema
import referencing
import referencing.exceptions
from jsonschema.validators import validator_for

from scribe_service.pipeline.segment import Segmented, Step

if TYPE_CHECKING:  # verdict.py imports the library, which imports this module's registry
    from scribe_service.pipeline.verdict import Verdict

__all__ = [
    "ALWAYS_RUN",
    "CHECKS",
    "ArithmeticClaim",
    "CheckFinding",
    "CheckInput",
    "CheckToolCall",
    "UnknownCheck",
    "apply_findings",
    "arithmetic_claims",
    "capped_score",
    "check_answer_grounded",
    "check_arithmetic",
    "check_input",
    "check_reference_answer",
    "check_tool_arguments",
    "final_answer",
    "final_answer_span",
    "reference_answers",
    "run_checks",
    "stated_answers",
    "run_checks_isolated",
    "step_checks",
]

ARITHMETIC_CAP = 1
SCHEMA_CAP = 1
UNKNOWN_TOOL_CAP = 0
UNGROUNDED_CAP = 1
REFERENCE_CAP = 0


class UnknownCheck(ValueError):
    """A prototype names a check that does not exist."""


@dataclass(frozen=True)
class CheckToolCall:
    name: str
    arguments: str | Mapping[str, Any]
    """The raw JSON string as the policy wrote it, or already-parsed arguments."""


@dataclass(frozen=True)
class CheckInput:
    text: str
    tool_calls: Sequence[CheckToolCall] = ()
    tools: Sequence[Mapping[str, Any]] | None = None
    """The request's `tools`, OpenAI function-tool format."""
    task: str = ""
    evidence: Sequence[str] = ()
    """Tool results and observations seen before and in this step; never the step's own text."""
    answer: str | None = None
    """The step's final answer; None means: take it from `text` (see `final_answer`)."""
    reference: str | None = None
    """The caller's known correct answer or reference solution (`ScoreRequest.reference`)."""


@dataclass(frozen=True)
class CheckFinding:
    check: str
    failure_mode: str
    description: str
    max_score: int
    source: Literal["check"] = field(default="check")


Check = Callable[[CheckInput], list[CheckFinding]]


def capped_score(score: int, findings: Sequence[CheckFinding]) -> int:
    """A judge's score after the checks' caps, the same rule as for judge-reported modes."""
    return min([score, *(finding.max_score for finding in findings)])


def apply_findings(verdict: Verdict, findings: Sequence[CheckFinding]) -> Verdict:
    """The verdict after the checks: score and expected score capped, the findings' ids added.

    The expected score is capped too, or logprob mode (whose reward is the expected score)
    would let a step the checks caught keep its reward."""
    if not findings:
        return verdict
    cap = min(finding.max_score for finding in findings)
    expected = verdict.expected_score
    return dataclasses.replace(
        verdict,
        score=capped_score(verdict.score, findings),
        expected_score=None if expected is None else min(expected, float(cap)),
        failure_modes=tuple(
            dict.fromkeys([*verdict.failure_modes, *(f.failure_mode for f in findings)])
        ),
    )


def check_input(
    segmented: Segmented,
    step: Step,
    tools: Sequence[Mapping[str, Any]] | None,
    reference: str | None,
) -> CheckInput:
    """What the checks see of a step: its prose and calls, the tool results before it and its
    own observation as evidence (never its own text), the request's tools and reference."""
    before = [turn.text for turn in segmented.history[: step.history_end] if turn.role == "tool"]
    evidence = [*before, step.observation] if step.observation else before
    return CheckInput(
        text=step.prose,
        tool_calls=tuple(
            CheckToolCall(call.function.name, call.function.arguments) for call in step.tool_calls
        ),
        tools=tools,
        task=segmented.task,
        evidence=tuple(evidence),
        reference=reference,
    )


# --- arithmetic ------------------------------------------------------------------------------

MAX_TEXT_CHARS = 50_000
MAX_SIDE_CHARS = 200
MAX_EXPONENT = 64
MAX_BITS = 4096
APPROX_RELATIVE = Fraction(2, 100)

_FRAC_OUT = r"((\1)/(\2))"
# LaTeX and Unicode spellings of the same operators, rewritten before claims are found.
_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"(?<=\d)\s*(?=\\[dt]?frac)", " @ "),  # "4\frac58": a mixed number or a product?
        (r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", _FRAC_OUT),
        (r"\\boxed\s*\{([^{}]*)\}", r" \1 "),
        (r"\\(?:text|mathrm|mbox|operatorname)\s*\{~?([^{}]*)\}", r" \1 "),
        # Display math and LaTeX spacing end a claim; inline math flows with its sentence.
        (r"\\[\[\]]|\\q?quad\b", " ; "),
        (r"\\[()]", " "),
        (r"\\left|\\right", ""),
        (r"\\times|×|⋅|·|\\cdot|∗", "*"),
        (r"\\div|÷|∕", "/"),
        (r"−|﹣", "-"),
        (r"(?<=\d)\s+[xX]\s+(?=\d)", " * "),
        (r"²", "^2"),
        (r"³", "^3"),
        (r"\\%", "%"),
        (r"\{,\}", ","),
        (r"\\[,;:! ]", ""),
        (r"\\\$|\$", " "),
        (r"=>|⇒|→|\\implies|\\Rightarrow|\\to\b", " ; "),
        (r"\\approx|≈|≃|\\simeq|\\sim", "≈"),
        (r"=\s*(?:approximately|approx\.?|about|around|roughly|nearly|~)\s*", "≈ "),
        (r"(?m)^\s*(?:[-*•]|\d{1,3}[.)])\s+", " "),
    )
)
# Characters a claim may contain: a run of them, bounded by anything else, is one candidate.
_RUN = re.compile(r"(?:[0-9+\-*/^()%≈=\[\]{} \t,]|\.(?=\d))+")
_ANY_RELATION = re.compile(r"[=≈≃]|\\approx|\\sim")
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d,])")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_IMPLICIT_TIMES = re.compile(r"(?<=[\d)])\s*(?=\()")
_WORD_BEFORE = re.compile(r"([A-Za-z']+)$")
_WORD_AFTER = re.compile(r"^\s*([A-Za-z]+)")
# Words after which a number continues a phrase instead of starting a claim: in "half of
# 20 = 10" or "add 5 to 20 = 25" the left side is not "20".
_UNSAFE_BEFORE = frozenset(
    "of times by plus minus over per into than and or from to with half twice double triple "
    "quarter third thirds fourth fifth tenth x sqrt root roots square cube squared cubed "
    "factorial log ln sin cos tan exp gcd lcm mod divided multiplied dividing multiplying "
    "add adding subtract subtracting multiply divide increase decrease percent at between".split()
)
_UNSAFE_AFTER = frozenset(
    "of times per divided multiplied plus minus squared cubed x more less percent mod".split()
)


class _Undecidable(Exception):
    """The claim is outside what the evaluator understands: the check stays silent."""


@dataclass(frozen=True)
class _Num:
    value: Fraction
    percent: bool = False


@dataclass(frozen=True)
class _Side:
    source: str
    num: _Num
    decimals: int | None
    """Decimal places shown when the side is one number literal; None for an expression."""


@dataclass(frozen=True)
class ArithmeticClaim:
    left: str
    right: str
    left_value: Fraction
    right_value: Fraction
    approximate: bool
    holds: bool


def _rewrite(text: str) -> str:
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)
        if replacement == _FRAC_OUT:
            for _ in range(2):  # nested fractions resolve from the inside out
                text = pattern.sub(replacement, text)
    return text


def _check_size(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise _Undecidable("number too large")
    return value


def _binary(op: ast.operator, a: _Num, b: _Num) -> _Num:
    if isinstance(op, ast.Add | ast.Sub):
        if a.percent != b.percent:  # "100 + 10%": additive percent of a base is ambiguous
            raise _Undecidable("percent mixed with a number")
        value = a.value + b.value if isinstance(op, ast.Add) else a.value - b.value
        return _Num(_check_size(value), a.percent)
    if isinstance(op, ast.Mult):
        return _Num(_check_size(a.value * b.value), a.percent and b.percent)
    if isinstance(op, ast.Div):
        if b.value == 0:
            raise _Undecidable("division by zero")
        return _Num(_check_size(a.value / b.value), a.percent and not b.percent)
    if isinstance(op, ast.Pow):
        return _Num(_power(a, b))
    raise _Undecidable(type(op).__name__)


def _power(base: _Num, exponent: _Num) -> Fraction:
    e = exponent.value
    if base.percent or exponent.percent or e.denominator != 1 or abs(e) > MAX_EXPONENT:
        raise _Undecidable("exponent")
    bits = max(base.value.numerator.bit_length(), base.value.denominator.bit_length())
    if bits * abs(e.numerator) > MAX_BITS:
        raise _Undecidable("power too large")
    if base.value == 0 and e < 0:
        raise _Undecidable("division by zero")
    return base.value ** int(e)


def _evaluate(node: ast.expr, source: str) -> _Num:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        literal = ast.get_source_segment(source, node)
        if literal is None:
            raise _Undecidable("literal")
        return _Num(Fraction(literal))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _evaluate(node.operand, source)
        return _Num(-inner.value if isinstance(node.op, ast.USub) else inner.value, inner.percent)
    if isinstance(node, ast.BinOp):
        return _binary(node.op, _evaluate(node.left, source), _evaluate(node.right, source))
    if (  # "20%" was rewritten to P(20)
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "P"
        and len(node.args) == 1
        and not node.keywords
    ):
        inner = _evaluate(node.args[0], source)
        return _Num(inner.value / 100, percent=True)
    raise _Undecidable(type(node).__name__)


_CLOSER = {"(": ")", "[": "]"}


def _strip_unbalanced(part: str) -> str:
    part = part.strip().removeprefix("**").removesuffix("**").strip()  # markdown bold
    while re.search(r"\s[(\[]$", part) and part.count(part[-1]) > part.count(_CLOSER[part[-1]]):
        part = part[:-1].strip()
    while part.startswith("(") and part.count("(") > part.count(")"):
        part = part[1:].strip()
    while part.endswith(")") and part.count(")") > part.count("("):
        part = part[:-1].strip()
    return part


def _side(part: str) -> _Side:
    shown = source = _strip_unbalanced(part)
    if not source or len(source) > MAX_SIDE_CHARS or source[0] in "+*/^":
        raise _Undecidable("fragment")
    source = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), source)
    source = _PERCENT.sub(r"P(\1)", source)
    source = _IMPLICIT_TIMES.sub("*", source.replace("[", "(").replace("]", ")"))
    source = source.replace("{", "(").replace("}", ")").replace("^", "**")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise _Undecidable("unparseable") from exc
    num = _evaluate(tree.body, source)
    literal = re.fullmatch(r"[-+]?\s*(?:P\()?\d+(?:\.(\d+))?\)?", source)
    decimals = None
    if literal:
        decimals = len(literal.group(1) or "") + (2 if num.percent else 0)
    return _Side(shown, num, decimals)


def _shift(decimals: int | None) -> int | None:
    return None if decimals is None else max(decimals - 2, 0)


def _readings(a: _Side, b: _Side) -> Iterator[tuple[Fraction, int | None, Fraction, int | None]]:
    """Values (with shown decimals) to compare: "0.2 = 20%" and "0.2 * 100 = 20%" both hold."""
    yield a.num.value, a.decimals, b.num.value, b.decimals
    if a.num.percent and not b.num.percent:
        yield a.num.value * 100, _shift(a.decimals), b.num.value, b.decimals
    if b.num.percent and not a.num.percent:
        yield a.num.value, a.decimals, b.num.value * 100, _shift(b.decimals)


def _close(exact: Fraction, shown: Fraction, decimals: int | None, approximate: bool) -> bool:
    """Whether `shown` states `exact`, allowing the rounding its written precision implies."""
    if exact == shown:
        return True
    diff = abs(exact - shown)
    if approximate and exact != 0 and diff / abs(exact) <= APPROX_RELATIVE:
        return True
    # Rounding (half a unit of the last shown digit) or truncation is a license only when the
    # exact value needs more digits than were shown.
    if decimals is None:
        return False
    unit = Fraction(1, 10**decimals)
    if not approximate and (exact / unit).denominator == 1:
        return False  # exact at the shown precision, so no rounding happened
    truncated = Fraction(int(exact / unit)) * unit
    return diff <= unit / 2 or shown == truncated


def _link_holds(a: _Side, b: _Side, approximate: bool) -> bool:
    for x, dx, y, dy in _readings(a, b):
        decimals: int | None
        # The side written as a literal with fewer decimals is the rounded one.
        if dy is not None and (dx is None or dy <= dx):
            exact, shown, decimals = x, y, dy
        else:
            exact, shown, decimals = y, x, dx
        if _close(exact, shown, decimals, approximate):
            return True
    return False


def _safe_start(before: str, part: str) -> bool:
    """Whether a claim's left side starts here, rather than ending a phrase ("half of 20 = 10")."""
    stripped = before.rstrip(" \t")
    if not stripped or stripped[-1] in ":;,.\n\"'`":
        return True
    if not stripped[-1].isalpha() or len(stripped) == len(before):
        return False  # glued to a word or a symbol: "f(2)", "x2", "\sqrt{16}", "√16"
    if part.lstrip().startswith("-"):
        return False  # "Age - 4 = 6": a binary minus after a quantity named in words
    word = _WORD_BEFORE.search(stripped)
    if word is None:
        return False
    name = word.group(1).lower()
    if stripped[: word.start()].endswith("\\"):  # a LaTeX command: an operator unless spacing
        return name in ("quad", "qquad")
    if name == "and":  # ", and 17 - 2 = 15" joins claims; "the sum of 3 and 4 = 7" does not
        return stripped[: word.start()].rstrip().endswith(",")
    # A lone letter other than "a" is a variable: "x + 3 = 5" says nothing about "3 = 5".
    return name not in _UNSAFE_BEFORE and (len(name) > 1 or name == "a")


def _safe_end(part: str, after: str) -> bool:
    """Whether a claim's right side ends here, rather than going on ("= 20% of 50")."""
    if not after or after[0] in "\n;:.,\"'`":
        return True
    if re.search(r"\s[(\[]\s*$", part):  # a parenthetical follows: "= 12 (check: ok)"
        part = " "
    if not after[0].isalpha() or part == part.rstrip():
        return False  # glued on, or a symbol we do not read: "12x", "5!", "30°"
    word = _WORD_AFTER.match(after)
    return not (word and word.group(1).lower() in _UNSAFE_AFTER)


def _runs(text: str) -> Iterator[tuple[str, str, str]]:
    """(text before, run, text after) for every stretch that may hold an `=` claim."""
    for match in _RUN.finditer(text):
        if "=" in match.group(0) or "≈" in match.group(0):
            # Only the neighbourhood decides where a claim starts and ends.
            yield (
                text[max(0, match.start() - 80) : match.start()],
                match.group(0),
                text[match.end() : match.end() + 80],
            )


def _split_commas(run: str) -> list[tuple[int, str]]:
    """Commas outside brackets end a claim, except thousands separators: (offset, piece) pairs.

    A comma inside brackets stays: "f(1,2)" and "(3, 4)" are then tuples, which never evaluate."""
    protected = _THOUSANDS.sub(lambda m: m.group(0).replace(",", "\0"), run)
    pieces, start, depth = [], 0, 0
    for i, ch in enumerate(protected):
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth <= 0:
            pieces.append((start, run[start:i]))
            start, depth = i + 1, 0
    pieces.append((start, run[start:]))
    return pieces


def _bracket_depths(piece: str) -> tuple[int, int]:
    """(lowest, final) nesting depth: (0, 0) when the piece's brackets balance."""
    depth = lowest = 0
    for ch in piece:
        depth += (ch in "([{") - (ch in ")]}")
        lowest = min(lowest, depth)
    return lowest, depth


def arithmetic_claims(text: str) -> list[ArithmeticClaim]:
    """Every `a = b` (or `a ≈ b`) link between two evaluable sides, whether it holds or not."""
    text = text[:MAX_TEXT_CHARS]
    if not _ANY_RELATION.search(text):
        return []
    text = _rewrite(text)
    claims: list[ArithmeticClaim] = []
    for before, run, after in _runs(text):
        for offset, piece in _split_commas(run):
            if "=" not in piece and "≈" not in piece:
                continue
            if len(piece) < len(run) and _bracket_depths(piece) != (0, 0):
                continue  # one item of a list inside brackets: "(6 \pm 4, 3) = (2, 3)"
            piece_before = before + run[:offset]
            piece_after = run[offset + len(piece) :] + after
            if piece_after.lstrip(" \t").startswith("?"):
                continue  # a question, not a claim
            claims.extend(_piece_claims(piece, piece_before, piece_after))
    return claims


def _piece_claims(piece: str, before: str, after: str) -> Iterator[ArithmeticClaim]:
    parts = re.split(r"(=|≈)", piece)
    raw_sides = parts[::2]
    sides: list[_Side | None] = []
    for i, part in enumerate(raw_sides):
        lead = before + part[: len(part) - len(part.lstrip())]
        if (i == 0 and not _safe_start(lead, part)) or (
            i == len(raw_sides) - 1 and not _safe_end(part, after)
        ):
            sides.append(None)
            continue
        try:
            sides.append(_side(part))
        except _Undecidable:
            sides.append(None)
    for i, relation in enumerate(parts[1::2]):
        a, b = sides[i], sides[i + 1]
        if a is None or b is None:
            continue
        approximate = relation == "≈"
        yield ArithmeticClaim(
            left=a.source,
            right=b.source,
            left_value=a.num.value,
            right_value=b.num.value,
            approximate=approximate,
            holds=_link_holds(a, b, approximate),
        )


def _show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    try:
        return f"{float(value):.6g}"
    except OverflowError:
        return f"{value.numerator}/{value.denominator}"[:60]


def check_arithmetic(inp: CheckInput) -> list[CheckFinding]:
    findings = []
    for claim in arithmetic_claims(inp.text):
        if claim.holds:
            continue
        relation = "≈" if claim.approximate else "="
        findings.append(
            CheckFinding(
                check="arithmetic",
                failure_mode="arithmetic_error",
                description=(
                    f"'{claim.left} {relation} {claim.right}': the left side is "
                    f"{_show(claim.left_value)}, the right side {_show(claim.right_value)}"
                ),
                max_score=ARITHMETIC_CAP,
            )
        )
    return findings


# --- tool arguments --------------------------------------------------------------------------


def _tool_schemas(tools: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any] | None]:
    """Tool name -> its `parameters` schema (None when it declares none)."""
    schemas: dict[str, Mapping[str, Any] | None] = {}
    for tool in tools:
        spec = tool.get("function", tool)
        if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
            parameters = spec.get("parameters")
            schemas[spec["name"]] = parameters if isinstance(parameters, Mapping) else None
    return schemas


@functools.lru_cache(maxsize=128)
def _validator(schema_json: str) -> jsonschema.protocols.Validator | None:
    """A validator for a schema (as sorted JSON, so it can be cached); None if it is invalid."""
    schema = json.loads(schema_json)
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError:
        return None
    # An empty registry: a `$ref` to anywhere outside the schema is never fetched.
    return cls(schema, registry=referencing.Registry(), format_checker=cls.FORMAT_CHECKER)


def _schema_problems(schema: Mapping[str, Any], arguments: dict[str, Any]) -> list[str] | None:
    """The schema's complaints about `arguments`; None when the schema itself is unusable."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    if validator is None:
        return None
    try:
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
    except (referencing.exceptions.Unresolvable, RecursionError):
        return None
    return [_error_text(error) for error in errors]


def _error_text(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
    return f"{where}: {error.message[:160]}"


def check_tool_arguments(inp: CheckInput) -> list[CheckFinding]:
    if not inp.tools:
        return []
    schemas = _tool_schemas(inp.tools)
    findings = []
    for call in inp.tool_calls:
        if call.name not in schemas:
            findings.append(
                CheckFinding(
                    "tool_arguments",
                    "unknown_tool",
                    f"'{call.name}' is not one of the request's tools: {sorted(schemas)}"[:300],
                    UNKNOWN_TOOL_CAP,
                )
            )
            continue
        problem = _argument_problem(call, schemas[call.name])
        if problem:
            findings.append(CheckFinding("tool_arguments", "schema_violation", problem, SCHEMA_CAP))
    return findings


def _argument_problem(call: CheckToolCall, schema: Mapping[str, Any] | None) -> str | None:
    arguments: object = call.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except RecursionError:
            return f"{call.name}: the arguments nest too deeply to read"
        except json.JSONDecodeError as exc:
            return f"{call.name}: the arguments are not valid JSON ({exc.msg}): {arguments!r:.120}"
    if not isinstance(arguments, Mapping):
        return f"{call.name}: the arguments are not a JSON object: {arguments!r:.120}"
    if schema is None:
        return None
    problems = _schema_problems(schema, dict(arguments))
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{call.name}: {problems[0]}{more}"


# --- answer grounding ------------------------------------------------------------------------

MAX_ANSWER_TOKENS = 8
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS = re.compile(
    r"\b(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*(.+?)(?:\.(?:\s|$)|\n|$)", re.IGNORECASE
)
# Words that carry no identity: "1969 to 1974" is grounded by its years, not by "to".
_STOPWORDS = frozenset("a an the of to in on at and or for from by with as".split())
_NUMBER_WORDS = {
    word: str(i)
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
# Answers that are not an entity to look up: a yes/no verdict or an admission of not knowing.
_NOT_ENTITIES = frozenset(
    {
        "yes",
        "no",
        "true",
        "false",
        "unknown",
        "none",
        "not found",
        "cannot be determined",
        "insufficient information",
        "i don't know",
        "i do not know",
        "n/a",
    }
)


def final_answer_span(text: str) -> tuple[int, int] | None:
    """Where the final answer stands in `text`: the last `<answer>…</answer>`, else the last
    `\\boxed{…}`, else the last "The answer is …"; trimmed of spaces, `$`, `*` and a final dot."""
    for pattern in (_ANSWER_TAG, _BOXED, _ANSWER_IS):
        matches = list(pattern.finditer(text))
        if not matches:
            continue
        start, end = matches[-1].span(1)
        while start < end and text[start] in " \t\n$*":
            start += 1
        while end > start and text[end - 1] in " \t\n$*.":
            end -= 1
        return (start, end) if end > start else None
    return None


def final_answer(text: str) -> str | None:
    """The step's final answer (see `final_answer_span`)."""
    span = final_answer_span(text)
    return text[span[0] : span[1]] if span else None


def _tokens(text: str) -> list[str]:
    if not text.isascii():  # "Zürich" matches "Zurich"
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _THOUSANDS_IN_TEXT.sub("", text.lower())
    text = _POSSESSIVE.sub("", text)
    words = _WORD.findall(text)
    return [
        _number_token(w) if w[0].isdigit() else _NUMBER_WORDS.get(w, w)
        for w in words
        if w not in _STOPWORDS
    ]


_THOUSANDS_IN_TEXT = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 1,000 -> 1000
_POSSESSIVE = re.compile(r"'s\b")
_WORD = re.compile(r"\d+(?:\.\d+)?|[^\W_]+")


@functools.lru_cache(maxsize=256)
def _token_set(text: str) -> frozenset[str]:
    """Cached: a trajectory shows every step the same earlier tool results again."""
    return frozenset(_tokens(text))


def _number_token(word: str) -> str:
    if "." in word:
        word = word.rstrip("0").rstrip(".")  # 12.50 -> 12.5, 3.0 -> 3
    return word.lstrip("0") or "0" if word[:1] == "0" and "." not in word else word


def _derived_numbers(text: str) -> set[str]:
    """Results of the step's own correct computations: a derived number needs no evidence."""
    values = set()
    for claim in arithmetic_claims(text):
        if claim.holds:
            values.update(_tokens(_show(claim.left_value) + " " + _show(claim.right_value)))
    return values


def check_answer_grounded(inp: CheckInput) -> list[CheckFinding]:
    answer = inp.answer if inp.answer is not None else final_answer(inp.text)
    if not answer or not any(text.strip() for text in inp.evidence):
        return []
    words = _tokens(answer)
    if not words or len(words) > MAX_ANSWER_TOKENS or " ".join(words) in _NOT_ENTITIES:
        return []
    if words[0] in ("yes", "no"):  # "No, only the Gibson contains gin": a verdict, explained
        return []
    seen = set().union(*(_token_set(text) for text in inp.evidence))
    missing = [w for w in words if w not in seen]
    if missing and all(w[:1].isdigit() for w in missing):
        missing = [w for w in missing if w not in _derived_numbers(inp.text)]
    # A number must be there itself; of the words, most must be missing: "Bill Murray" against
    # "William Murray" is a name form, not an invention; "London" against a text about Paris is.
    if 2 * len(missing) <= len(words) and not any(w[:1].isdigit() for w in missing):
        return []
    return [
        CheckFinding(
            "answer_grounded",
            "ungrounded_answer",
            f"the answer {answer!r:.120} is not in the evidence (missing: {', '.join(missing)})",
            UNGROUNDED_CAP,
        )
    ]


# --- reference answer ------------------------------------------------------------------------

MAX_REFERENCE_CHARS = 200
MAX_STATED_ANSWER_TOKENS = 12
_REFERENCE_HASHES = re.compile(r"####\s*([^\n]+?)\s*$")
_TRAILING_PARENTHETICAL = re.compile(r"\s*(?:\([^()]*\)|\[[^\[\]]*\])\s*$")
_NAMED_VALUE = re.compile(r"^\s*[A-Za-z]\s*=\s*(.+)$")  # "x = 5" states 5
_NUMBERISH = re.compile(r"[0-9+\-*/^().,%\s]*\d[0-9+\-*/^().,%\s]*")
# Notation we do not evaluate: with it, two answers may be equal without looking alike.
_MATHY = re.compile(r"[\\^_{}=<>√π∞±]|\d\s*[*/+^]\s*[\d(]|sqrt|\bpi\b", re.IGNORECASE)


# "The answer is not 7 / in the table / correct": words that talk about an answer, not state it.
_NOT_AN_ANSWER = re.compile(
    r"(?i)(?:not|in|on|at|from|by|that|because|as|correct|incorrect|right|wrong|clear|"
    r"consistent|given|shown|above|below|likely|probably|still|then|now)\b"
)


def _short(answer: str) -> bool:
    answer = answer.strip()
    return (
        bool(answer)
        and "\n" not in answer
        and len(answer) <= MAX_REFERENCE_CHARS
        and len(_tokens(answer)) <= MAX_ANSWER_TOKENS
    )


def reference_answers(reference: str) -> list[str] | None:
    """The acceptable short answers a reference holds; None when it holds none we can read."""
    text = reference.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            value = None
        if isinstance(value, list) and value:
            answers = [str(v).strip() for v in value if isinstance(v, str | int | float)]
            # One long or odd alternative makes the set undecidable: it may be the one matched.
            ok = len(answers) == len(value) and all(_short(a) for a in answers)
            return answers if ok else None
    if _short(text):
        return [text]
    stated = _REFERENCE_HASHES.search(text)
    answer = stated.group(1) if stated else final_answer(text)
    return [answer] if answer and _short(answer) else None


def stated_answers(text: str) -> list[str]:
    """Every final answer the text states, in the form `final_answer` reads (all `<answer>`
    tags, else all `\\boxed{}`, else every "The answer is …"), trimmed the same way."""
    for pattern in (_ANSWER_TAG, _BOXED, _ANSWER_IS):
        found = [m.group(1).lstrip(" \t\n$*").rstrip(" \t\n$*.") for m in pattern.finditer(text)]
        if any(found):
            return [answer for answer in found if answer]
    return []


def _stated(answer: str) -> str:
    answer = _TRAILING_PARENTHETICAL.sub("", answer.strip()).strip()
    named = _NAMED_VALUE.match(answer)
    return named.group(1).strip() if named else answer


def _number(text: str) -> _Side | None:
    source = _rewrite(text).strip().rstrip(".").strip()
    if not _NUMBERISH.fullmatch(source):
        return None
    try:
        return _side(source)
    except _Undecidable:
        return None


_ORDINALS = {
    word: str(i)
    for i, word in enumerate(
        "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
        "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth "
        "twentieth".split(),
        start=1,
    )
}
_ORDINAL_SUFFIXES = frozenset(("st", "nd", "rd", "th"))


def _answer_tokens(text: str) -> list[str]:
    """`_tokens`, with ordinals as numbers: "third", "3rd" and "Season 3" share the 3."""
    return [_ORDINALS.get(t, t) for t in _tokens(text) if t not in _ORDINAL_SUFFIXES]


def _initials(words: Sequence[str]) -> str:
    return "".join(word[0] for word in words)


def _answers_agree(answer: str, reference: str) -> bool | None:
    """True: the same answer; False: clearly different; None: cannot tell."""
    a_num, r_num = _number(answer), _number(reference)
    if a_num is not None and r_num is not None:
        return _link_holds(a_num, r_num, approximate=False)
    if _MATHY.search(answer) or _MATHY.search(reference):
        return None
    a, r = _answer_tokens(answer), _answer_tokens(reference)
    if not a or not r:
        return None
    if a == r:
        return True
    joined_a, joined_r = f" {' '.join(a)} ", f" {' '.join(r)} "
    if joined_a in joined_r or joined_r in joined_a or set(a) & set(r):
        return None
    if (len(a) == 1 and a[0] == _initials(r)) or (len(r) == 1 and r[0] == _initials(a)):
        return None  # "NYC" against "New York City"
    return False


def _contradicts(answer: str, references: Sequence[str]) -> bool:
    stated = _stated(answer)
    if not stated or len(_tokens(stated)) > MAX_STATED_ANSWER_TOKENS:
        return False
    if _NOT_AN_ANSWER.match(stated):
        return False
    # Any acceptable answer that matches, or that cannot be told apart, keeps the check silent.
    return all(_answers_agree(stated, _stated(ref)) is False for ref in references)


def check_reference_answer(inp: CheckInput) -> list[CheckFinding]:
    if not inp.reference:
        return []
    references = reference_answers(inp.reference)
    answers = [inp.answer] if inp.answer is not None else stated_answers(inp.text)
    if not references:
        return []
    # Every answer the step states is held to the reference: a later sentence that names the
    # reference ("the reference answer is 12, which matches") cannot undo a wrong one.
    wrong = next((a for a in answers if _contradicts(a, references)), None)
    if wrong is None:
        return []
    shown = references[0] if len(references) == 1 else references
    return [
        CheckFinding(
            "reference_answer",
            "reference_mismatch",
            f"the final answer {_stated(wrong)!r:.120} disagrees with the reference answer "
            f"{shown!r:.120}",
            REFERENCE_CAP,
        )
    ]


# --- registry --------------------------------------------------------------------------------

CHECKS: Mapping[str, Check] = {
    "arithmetic": check_arithmetic,
    "tool_arguments": check_tool_arguments,
    "answer_grounded": check_answer_grounded,
    "reference_answer": check_reference_answer,
}


ALWAYS_RUN: tuple[str, ...] = ("arithmetic", "tool_arguments", "reference_answer")
"""Checks every step gets, whichever prototype it routed to. Each holds the step to a fact
that does not depend on the skill: arithmetic itself, the request's tool schemas, the caller's
reference; each is silent without its input (no claim, no call or no `tools`, no reference).
Declared per prototype they depended on the router: in the perturbation suite a final answer
routed to a search prototype escaped the reference check (3 of 15 answer swaps on dev
HotpotQA), and a computation routed to a tool prototype the arithmetic check (2 of 45
changed results on 300 dev ProcessBench solutions). On steps people labelled correct they
fire rarely (bench/checks_corpus.py, all checks on every step): arithmetic on 11 of 4,745
ProcessBench and 0 of 258 HotpotQA steps; tool arguments on 7 of the 258, each a real schema
break. `answer_grounded` stays declared: a derived (math) answer is in no evidence."""


def step_checks(declared: Sequence[str]) -> tuple[str, ...]:
    """The checks a step routed to a prototype declaring `declared` gets: those, then the
    `ALWAYS_RUN` ones it did not declare."""
    return tuple(dict.fromkeys([*declared, *ALWAYS_RUN]))


def run_checks(names: Sequence[str], inp: CheckInput) -> list[CheckFinding]:
    """Run the named checks in order; an unknown name is a configuration error."""
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise UnknownCheck(f"unknown checks {unknown}; known: {sorted(CHECKS)}")
    return [finding for name in names for finding in CHECKS[name](inp)]


def run_checks_isolated(
    names: Sequence[str], inp: CheckInput
) -> tuple[list[CheckFinding], list[tuple[str, Exception]]]:
    """Like `run_checks`, but a check that raises is skipped and returned with its exception:
    a bug in one check must not cost a step its score, nor silence the other checks."""
    findings: list[CheckFinding] = []
    errors: list[tuple[str, Exception]] = []
    for name in names:
        try:
            findings.extend(CHECKS[name](inp))
        except Exception as exc:
            errors.append((name, exc))
    return findings, errors
