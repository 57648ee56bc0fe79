"""Stage 1: split a trajectory into steps, each with a mid-level subgoal.

* `messages`: one step per assistant message (its text and its tool calls); the tool
  messages answering those calls are kept as the step's observation, and every other message
  becomes history the judge sees as context.
* `completion`: `<subgoal>` markers, else "Step N:" headers, else numbered lines, else
  paragraphs; each step records its `char_span` in the completion.
* `steps`: taken as given.

The subgoal is the policy's explicit marker when it wrote one; otherwise it is derived from
the step: its stated intent ("I need to…", "Let's compute…"), the tool call it makes, or the
answer it gives. Segmentation is pure and never drops text: every assistant message and
every non-blank stretch of a completion lands in exactly one step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from scribe_client.protocol import (
    AssistantMessage,
    ChatMessage,
    StepInput,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
    content_text,
)

SubgoalSource = Literal["given", "marker", "derived"]

MAX_SUBGOAL_CHARS = 300
_SUBGOAL_TAG = re.compile(r"<subgoal>(.*?)</subgoal>", re.IGNORECASE | re.DOTALL)
_STEP_HEADER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?\**[ \t]*step[ \t]+(\d+)[ \t]*[:.)\-]\**[ \t]*(.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBERED_LINE = re.compile(r"^[ \t]*(\d{1,3})[.)][ \t]+(\S.*)$", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_THINK = re.compile(r"</?think>", re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+|\n+")
_INTENT = re.compile(
    r"\b(i need to|i will|i'll|i should|i must|let me|let's|let us|we need to|we will|"
    r"we'll|we must|next,|now,|first,|then,|finally,|to (?:find|determine|compute|calculate|"
    r"check|verify|get|answer|solve))",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Turn:
    """One piece of history the judge may see as context."""

    role: str
    text: str


@dataclass(frozen=True)
class Step:
    index: int
    content: str
    subgoal: str
    subgoal_source: SubgoalSource
    message_index: int | None = None
    char_span: tuple[int, int] | None = None
    observation: str = ""
    history_end: int = 0
    """How many `Segmented.history` turns precede this step."""
    text: str | None = None
    """The step's own prose without its rendered tool calls; None: the whole `content`."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The assistant message's tool calls as sent, for checks that parse their arguments."""

    @property
    def prose(self) -> str:
        return self.content if self.text is None else self.text


@dataclass(frozen=True)
class Segmented:
    task: str
    steps: list[Step]
    history: list[Turn] = field(default_factory=list)


# --- subgoal derivation --------------------------------------------------------------------


def _clip(text: str, limit: int = MAX_SUBGOAL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _intent_sentence(text: str) -> str:
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    for sentence in sentences[:6]:
        if _INTENT.search(sentence):
            return sentence
    return sentences[0] if sentences else ""


def _call_phrase(call: ToolCall) -> str:
    try:
        args = json.loads(call.function.arguments)
    except json.JSONDecodeError:
        return f"Call {call.function.name} with {call.function.arguments}"
    if isinstance(args, dict) and args:
        shown = "; ".join(f"{key}: {_argument_text(value)}" for key, value in args.items())
        return f"Call {call.function.name} with {shown}"
    return f"Call {call.function.name}"


def _argument_text(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(_argument_text(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def marker_subgoal(text: str) -> str | None:
    """The subgoal the policy wrote itself: a `<subgoal>` tag or a leading "Step N: title"."""
    tag = _SUBGOAL_TAG.search(text)
    if tag and tag.group(1).strip():
        return _clip(tag.group(1))
    first_line = text.lstrip().split("\n", 1)[0]
    header = _STEP_HEADER.match(first_line)
    if header and header.group(2).strip():
        return _clip(header.group(2).strip("*: "))
    return None


def derive_subgoal(text: str, tool_calls: list[ToolCall] | None = None) -> str:
    """A subgoal for a step that did not state one: its intent, its tool call or its answer."""
    prose = _THINK.sub(" ", _ANSWER.sub(" ", text)).strip()
    parts = []
    answer = _ANSWER.search(text)
    intent = _intent_sentence(prose)
    if intent:
        parts.append(intent)
    parts.extend(_call_phrase(call) for call in tool_calls or ())
    if answer:
        parts.append(f"Give the final answer: {answer.group(1).strip()}")
    elif not tool_calls and (boxed := _BOXED.search(prose)):
        parts.append(f"State the final answer: {boxed.group(1).strip()}")
    if not parts:
        return "(empty step)"
    return _clip(" ".join(parts))


def _subgoal_for(text: str, tool_calls: list[ToolCall] | None = None) -> tuple[str, SubgoalSource]:
    marked = marker_subgoal(text)
    if marked is not None:
        return marked, "marker"
    return derive_subgoal(text, tool_calls), "derived"


# --- the three input forms -----------------------------------------------------------------


def render_calls(calls: Iterable[ToolCall]) -> str:
    """Tool calls as a step's content shows them to the judge, one line each."""
    lines = []
    for call in calls:
        try:
            args = json.dumps(json.loads(call.function.arguments), ensure_ascii=False)
        except json.JSONDecodeError:
            args = call.function.arguments
        lines.append(f"[tool call {call.id}] {call.function.name}({args})")
    return "\n".join(lines)


def segment_messages(messages: list[ChatMessage]) -> Segmented:
    first_assistant = next(i for i, m in enumerate(messages) if isinstance(m, AssistantMessage))
    task = "\n\n".join(
        f"[{m.role}] {content_text(m.content)}"
        for m in messages[:first_assistant]
        if isinstance(m, SystemMessage | UserMessage) and content_text(m.content).strip()
    )
    steps: list[Step] = []
    history: list[Turn] = []
    i = first_assistant
    while i < len(messages):
        message = messages[i]
        if not isinstance(message, AssistantMessage):
            role = "tool" if isinstance(message, ToolMessage) else message.role
            history.append(Turn(role, content_text(message.content)))
            i += 1
            continue
        text = content_text(message.content)
        calls = message.tool_calls or []
        body = "\n".join(part for part in (text.strip(), render_calls(calls)) if part)
        # Tool messages right after the call are its observation, judged with the step.
        answers = []
        j = i + 1
        while j < len(messages) and isinstance(messages[j], ToolMessage):
            answer = messages[j]
            assert isinstance(answer, ToolMessage)
            answers.append(f"[tool result {answer.tool_call_id}] {content_text(answer.content)}")
            j += 1
        subgoal, source = _subgoal_for(text, calls)
        steps.append(
            Step(
                index=len(steps),
                content=body,
                subgoal=subgoal,
                subgoal_source=source,
                message_index=i,
                observation="\n".join(answers),
                history_end=len(history),
                text=text,
                tool_calls=tuple(calls),
            )
        )
        history.append(Turn("assistant", body))
        if answers:
            history.append(Turn("tool", "\n".join(answers)))
        i = j
    return Segmented(task=task, steps=steps, history=history)


def _spans(completion: str) -> list[tuple[int, int, str | None]]:
    """(start, end, explicit subgoal or None) for each step of a completion."""
    tags = list(_SUBGOAL_TAG.finditer(completion))
    if tags:
        cuts = [(m.start(), _clip(m.group(1)) or None) for m in tags]
        return _cut(completion, cuts)
    headers = list(_STEP_HEADER.finditer(completion))
    if len(headers) >= 2:
        cuts = [(m.start(), _clip(m.group(2).strip("*: ")) or None) for m in headers]
        return _cut(completion, cuts)
    numbered = list(_NUMBERED_LINE.finditer(completion))
    if len(numbered) >= 2 and [int(m.group(1)) for m in numbered] == list(
        range(1, len(numbered) + 1)
    ):
        return _cut(completion, [(m.start(), None) for m in numbered])
    cuts = [(0, None)]
    cuts += [(m.end(), None) for m in _PARAGRAPH_BREAK.finditer(completion)]
    return _cut(completion, cuts)


def _cut(text: str, cuts: list[tuple[int, str | None]]) -> list[tuple[int, int, str | None]]:
    if cuts[0][0] > 0:
        cuts.insert(0, (0, None))  # text before the first marker is a step of its own
    spans = []
    for (start, subgoal), (end, _) in zip(cuts, [*cuts[1:], (len(text), None)], strict=True):
        chunk = text[start:end]
        if not chunk.strip():
            continue
        lead = len(chunk) - len(chunk.lstrip())
        trail = len(chunk.rstrip())
        spans.append((start + lead, start + trail, subgoal))
    return spans


def _sequence(
    chunks: Iterable[tuple[str, tuple[str, SubgoalSource], tuple[int, int] | None]],
    prompt: str | None,
) -> Segmented:
    """Steps that follow one another with nothing in between: each is the next one's history."""
    steps: list[Step] = []
    history: list[Turn] = []
    for content, (subgoal, source), span in chunks:
        steps.append(
            Step(
                index=len(steps),
                content=content,
                subgoal=subgoal,
                subgoal_source=source,
                char_span=span,
                history_end=len(history),
            )
        )
        history.append(Turn("assistant", content))
    return Segmented(task=prompt or "", steps=steps, history=history)


def segment_completion(completion: str, prompt: str | None) -> Segmented:
    return _sequence(
        (
            (
                completion[start:end],
                (explicit, "marker") if explicit else _subgoal_for(completion[start:end]),
                (start, end),
            )
            for start, end, explicit in _spans(completion)
        ),
        prompt,
    )


def segment_steps(given: list[StepInput], prompt: str | None) -> Segmented:
    return _sequence(
        (
            (
                item.content,
                (_clip(item.subgoal), "given")
                if item.subgoal and item.subgoal.strip()
                else _subgoal_for(item.content),
                None,
            )
            for item in given
        ),
        prompt,
    )


def segment(
    *,
    messages: list[ChatMessage] | None = None,
    completion: str | None = None,
    steps: list[StepInput] | None = None,
    prompt: str | None = None,
) -> Segmented:
    """Segment whichever trajectory form the request carries (exactly one is given)."""
    if messages is not None:
        return segment_messages(messages)
    if completion is not None:
        return segment_completion(completion, prompt)
    if steps is not None:
        return segment_steps(steps, prompt)
    raise ValueError("no trajectory given")
