"""The scribe-reward wire schema, API version 1.

This module is the single definition of what crosses the wire between a trainer and the
service. It imports pydantic and the standard library only, so a trainer node can use it
without torch, FAISS or a web framework.

Two rules shape every response model:

* A number that cannot be computed is ``null``, never ``0``. A judge failure is reported as
  a step with ``status: "failed"`` and an ``error``; it never becomes a low ``reward``.
  Only ``training_reward``, the number meant for a trainer, counts it, under the documented
  failure policy of ``scribe_client.rewards``, so that breaking the judge never pays.
* Every accepted request yields one result per step, in trajectory order, so a caller can
  always line the results up with what it sent.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "API_VERSION",
    "AssistantMessage",
    "BatchScoreRequest",
    "BatchScoreResponse",
    "ChatMessage",
    "ErrorDetail",
    "ErrorResponse",
    "FailureModeInfo",
    "Finding",
    "FunctionCall",
    "HealthResponse",
    "JudgeInfo",
    "PrototypeDetail",
    "PrototypeList",
    "PrototypeSummary",
    "ReadyResponse",
    "ReloadRequest",
    "ReloadResponse",
    "RemoteRMRequest",
    "RemoteRMResponse",
    "RouteRequest",
    "RouteResponse",
    "ScoreOptions",
    "ScoreRequest",
    "ScoreResponse",
    "StepError",
    "StepInput",
    "StepResult",
    "StepRoute",
    "SystemMessage",
    "TextPart",
    "ToolCall",
    "ToolMessage",
    "UserMessage",
    "content_text",
]

API_VERSION = 1
MAX_METADATA_BYTES = 4096
MAX_REFERENCE_CHARS = 32_000

Aggregation = Literal["mean", "min", "last", "sum"]
JudgeMode = Literal["verdict", "logprob"]
FailurePolicy = Literal["pessimistic", "exclude"]
StepStatus = Literal["ok", "failed"]
ScoreStatus = Literal["ok", "partial", "failed"]


class _Wire(BaseModel):
    """Strict base: an unknown field is a client mistake worth a 422, not something to drop."""

    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    """Responses ignore unknown fields, so a newer server can add one without breaking
    deployed clients."""

    model_config = ConfigDict(extra="ignore")


class _Lenient(BaseModel):
    """OpenAI message objects carry vendor extras (``reasoning_content``, ``refusal``…)."""

    model_config = ConfigDict(extra="ignore")


# --- chat messages (the OpenAI chat-completions shape) -------------------------------------


class TextPart(_Lenient):
    """One text part of a multi-part message content."""

    type: Literal["text"] = "text"
    text: str


Content = str | list[TextPart] | None


class FunctionCall(_Lenient):
    name: str = Field(min_length=1, description="Name of the tool the assistant called.")
    arguments: str = Field(
        default="{}",
        description="Arguments as a JSON string, as OpenAI sends them. An object is accepted "
        "and serialised.",
    )

    @field_validator("arguments", mode="before")
    @classmethod
    def _serialise_object(cls, value: Any) -> Any:
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False)
        return value


class ToolCall(_Lenient):
    id: str = Field(description="Call id; a later tool message answers it by `tool_call_id`.")
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Lenient):
    role: Literal["system", "developer"]
    content: Content = None


class UserMessage(_Lenient):
    role: Literal["user"]
    content: Content = None


class AssistantMessage(_Lenient):
    role: Literal["assistant"]
    content: Content = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(_Lenient):
    role: Literal["tool"]
    content: Content = None
    tool_call_id: str = Field(description="The id of the assistant tool call this answers.")
    name: str | None = None


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


def content_text(content: Content) -> str:
    """The plain text of a message content (parts joined with newlines)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content)


# --- requests ------------------------------------------------------------------------------


class StepInput(_Wire):
    """A step the caller has already segmented."""

    subgoal: str | None = Field(
        default=None,
        description="The mid-level subgoal this step pursues. When null, it is derived from "
        "the content.",
    )
    content: str = Field(min_length=1, description="The step's text, verbatim.")


class ScoreOptions(_Wire):
    """How step scores become the scalars. Defaults follow the SCRIBE paper."""

    aggregation: Aggregation = Field(
        default="mean",
        description="How step rewards collapse into `process_reward`: mean, min, last or sum.",
    )
    outcome_weight: float = Field(
        default=0.7, ge=0.0, description="Weight of `outcome` in `reward` when it is given."
    )
    process_weight: float = Field(
        default=0.3, ge=0.0, description="Weight of `process_reward` in `reward`."
    )
    min_similarity: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity below which a step is judged with the generic fallback "
        "rubric. Null uses the server's setting.",
    )
    judge_mode: JudgeMode | None = Field(
        default=None,
        description="verdict: the judge writes a verdict (rationale, failure modes, score). "
        "logprob: the judge gives the score digit alone, and the step's reward is its "
        "expected score from the probabilities of 0-3 (one output token, deterministic). "
        "Null uses the server's setting.",
    )
    failure_policy: FailurePolicy | None = Field(
        default=None,
        description="How failed steps weigh in `training_reward`. pessimistic: a failed step "
        "counts as `failure_reward`, and a trajectory with nothing judged gets "
        "outcome_weight*outcome + process_weight*failure_reward, so breaking the judge never "
        "pays. exclude: the judged steps only, and the bare outcome when nothing was judged "
        "(exploitable by a policy that learns to break the judge). Null uses the server's "
        "setting.",
    )
    failure_reward: float | None = Field(
        default=None,
        le=0.0,
        allow_inf_nan=False,
        description="What a failed step counts as in `training_reward`; at most 0, the worst "
        "judged step reward. Null uses the server's setting.",
    )
    library_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Score only with this library version (a response's `library_version`); "
        "while another version serves, the request is refused with 409 naming it. Null: the "
        "version serving now.",
    )

    @model_validator(mode="after")
    def _some_weight(self) -> ScoreOptions:
        if self.outcome_weight == 0.0 and self.process_weight == 0.0:
            raise ValueError("outcome_weight and process_weight cannot both be 0")
        return self


class _Trajectory(_Wire):
    """Exactly one of `messages`, `completion` or `steps` carries the trajectory."""

    messages: list[ChatMessage] | None = Field(
        default=None,
        description="An OpenAI chat transcript. Each assistant message is one step; tool "
        "messages answering its calls are kept as that step's observations.",
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="OpenAI tool schemas available to the agent (with `messages`)."
    )
    completion: str | None = Field(
        default=None,
        description="One reasoning text. Split on <subgoal> markers, 'Step N:' headers or "
        "numbered lines when present, else on paragraphs.",
    )
    prompt: str | None = Field(default=None, description="The task the completion or steps answer.")
    steps: list[StepInput] | None = Field(
        default=None, description="A trajectory already split into steps."
    )

    @model_validator(mode="after")
    def _exactly_one_form(self) -> _Trajectory:
        given = [
            name for name in ("messages", "completion", "steps") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `messages`, `completion` or `steps`"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.tools is not None and self.messages is None:
            raise ValueError("`tools` only goes with `messages`")
        if self.prompt is not None and self.messages is not None:
            raise ValueError("`prompt` goes with `completion` or `steps`; put it in `messages`")
        if self.messages is not None and not any(
            isinstance(m, AssistantMessage) for m in self.messages
        ):
            raise ValueError("`messages` holds no assistant message to score")
        if self.completion is not None and not self.completion.strip():
            raise ValueError("`completion` is empty")
        if self.steps is not None and not self.steps:
            raise ValueError("`steps` is empty")
        return self


class ScoreRequest(_Trajectory):
    """Score one trajectory: segment, route each step to a skill prototype, judge, aggregate."""

    request_id: str | None = Field(
        default=None, max_length=200, description="Echoed back; generated when absent."
    )
    outcome: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="The outcome reward (e.g. final-answer correctness) in [0, 1]. When given, "
        "`reward` mixes it with the process reward.",
    )
    reference: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REFERENCE_CHARS,
        description="The known correct answer or a reference solution (a trainer's ground "
        "truth). The judge checks each step against it instead of solving the task itself.",
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description='Free-form JSON (e.g. `{"global_step": 120, "run": "grpo-7"}`), echoed '
        f"in the response and in the score log; at most {MAX_METADATA_BYTES} bytes as JSON.",
    )
    options: ScoreOptions = Field(default_factory=ScoreOptions)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            size = len(json.dumps(value, ensure_ascii=False, default=str).encode())
            if size > MAX_METADATA_BYTES:
                raise ValueError(f"is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
        return value


class RouteRequest(_Trajectory):
    """Segment a trajectory and route its steps, without judging."""

    request_id: str | None = Field(default=None, max_length=200)
    min_similarity: float | None = Field(default=None, ge=-1.0, le=1.0)


class BatchScoreRequest(_Wire):
    """Several trajectories scored together, e.g. one GRPO group."""

    requests: list[ScoreRequest] = Field(min_length=1)


# --- responses -----------------------------------------------------------------------------


class StepRoute(_Response):
    """Where a step sits in the trajectory and which skill prototype it was routed to."""

    index: int = Field(description="0-based position of the step in the trajectory.")
    message_index: int | None = Field(
        default=None, description="Index into `messages` of the assistant message (messages only)."
    )
    char_span: tuple[int, int] | None = Field(
        default=None,
        description="[start, end) character offsets into `completion` (completion only).",
    )
    subgoal: str = Field(description="The subgoal used for routing.")
    subgoal_source: Literal["given", "marker", "derived"] = Field(
        description="given: from `steps`; marker: written by the policy; derived: from the text."
    )
    prototype_id: str = Field(description="The prototype whose rubric applies.")
    similarity: float = Field(
        description="Cosine similarity between the subgoal and the nearest prototype exemplar."
    )
    fallback: bool = Field(
        description="True when similarity was below the threshold and the generic rubric applies."
    )


class StepError(_Response):
    type: str = Field(
        description="Error class: judge_unavailable, judge_connection_lost, judge_timeout, "
        "judge_http, judge_context_exceeded (the prompt is longer than the judge's context; "
        "never retried), judge_invalid_output, judge_low_score_mass (logprob mode), or internal."
    )
    message: str


class Finding(_Response):
    """A failure mode found in a step, by the judge or by a deterministic check; it caps the
    step's score at `max_score`."""

    failure_mode: str = Field(description="The failure mode's id.")
    source: Literal["judge", "check"] = Field(
        description="judge: reported by the judge from the prototype's list; check: found by "
        "a deterministic check the prototype declares (arithmetic, tool arguments, …)."
    )
    check: str | None = Field(default=None, description="The check that found it (checks only).")
    description: str = Field(
        description="judge: the prototype's description of the mode; check: what was found."
    )
    max_score: int = Field(ge=0, le=3, description="The highest score a step with it can get.")


class StepResult(StepRoute):
    """A routed step with the judge's verdict, or the error that prevented one."""

    score: int | None = Field(
        default=None,
        ge=0,
        le=3,
        description="Rubric level 0-3 (logprob mode: the most likely one); null when the step "
        "failed.",
    )
    reward: float | None = Field(
        default=None,
        description="score / 3 (logprob mode: expected_score / 3); null when the step failed.",
    )
    expected_score: float | None = Field(
        default=None,
        ge=0.0,
        le=3.0,
        description="Logprob mode: Σ s·p(s) over s in 0-3, the judge's probabilities "
        "renormalised over the four score tokens; null in verdict mode.",
    )
    score_mass: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Logprob mode: the probability the judge put on the four score tokens "
        "before renormalising; null in verdict mode.",
    )
    judge_score: int | None = Field(
        default=None,
        ge=0,
        le=3,
        description="The judge's own score (after its own failure modes) when a deterministic "
        "check capped `score` below it; null when no check capped the verdict.",
    )
    judge_expected_score: float | None = Field(
        default=None,
        ge=0.0,
        le=3.0,
        description="Logprob mode: the judge's own expected score when a check capped "
        "`expected_score`; null otherwise.",
    )
    failure_modes: list[str] = Field(
        default_factory=list,
        description="Ids of the failure modes found, by the judge and by the checks (the ids "
        "of `findings`).",
    )
    findings: list[Finding] = Field(
        default_factory=list,
        description="The failure modes found, with their source and cap. A check's findings "
        "are reported even when the judge failed on the step.",
    )
    rationale: str | None = None
    judge_replica: str | None = Field(
        default=None, description="The judge server that answered (its base URL)."
    )
    cached: bool | None = Field(
        default=None,
        description="True when the verdict came from the service's judgment cache (an "
        "identical deterministic judge call judged earlier, or in flight at the same time; "
        "`judge_replica` is then the one that judged it), false when it was judged for this "
        "step; null when the cache was not consulted (off, sampled judging) or the step failed.",
    )
    status: StepStatus
    error: StepError | None = None


class JudgeInfo(_Response):
    """How the steps were judged: enough to reproduce a reward."""

    model: str
    mode: JudgeMode
    temperature: float
    top_p: float
    seed: int | None
    max_tokens: int = Field(description="Output token budget per call (1 in logprob mode).")
    top_logprobs: int | None = Field(
        default=None, description="Logprob mode: alternatives read for the score token."
    )
    min_score_mass: float | None = Field(
        default=None, description="Logprob mode: below this score_mass a step fails."
    )


class ScoreResponse(_Response):
    request_id: str
    status: ScoreStatus = Field(
        description="ok: every step judged; partial: some failed (`reward` and "
        "`process_reward` use the judged steps); failed: none judged (they are null). "
        "`training_reward` is a number in every case."
    )
    reward: float | None = Field(
        description="outcome_weight*outcome + process_weight*process_reward when an outcome was "
        "given, else process_reward; null when it cannot be computed."
    )
    process_reward: float | None
    outcome_reward: float | None
    training_reward: float | None = Field(
        default=None,
        description="The number to hand a trainer: like `reward`, but failed steps count "
        "under `failure_policy` instead of being left out, so it is never null and a judge "
        "failure never raises it. Null only from servers that predate it.",
    )
    failure_policy: FailurePolicy | None = Field(
        default=None, description="The failure policy `training_reward` was computed under."
    )
    failure_reward: float | None = Field(
        default=None, description="What a failed step counted as in `training_reward`."
    )
    steps: list[StepResult]
    library_version: str
    judge_model: str
    judge: JudgeInfo | None = Field(
        default=None, description="The judge's mode and sampling; null without a judge."
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="The request's `metadata`, unchanged."
    )


class BatchScoreResponse(_Response):
    results: list[ScoreResponse] = Field(description="One result per request, in order.")


class RouteResponse(_Response):
    request_id: str
    steps: list[StepRoute]
    library_version: str


class FailureModeInfo(_Response):
    id: str
    description: str
    max_score: int = Field(ge=0, le=3, description="The highest score a step with it can get.")


class PrototypeSummary(_Response):
    id: str
    name: str
    domain: str
    usage_context: str


class PrototypeDetail(PrototypeSummary):
    reasoning_pattern: str
    levels: dict[str, str] = Field(description="Descriptor for each score level '0'..'3'.")
    failure_modes: list[FailureModeInfo]
    exemplars: list[str]
    checks: list[str] = Field(
        default_factory=list,
        description="Deterministic checks this prototype declares. Every step also gets "
        "`arithmetic`, `tool_arguments` and `reference_answer`, whatever its prototype.",
    )


class PrototypeList(_Response):
    library_version: str
    prototypes: list[PrototypeSummary]


class HealthResponse(_Response):
    status: Literal["ok"] = "ok"


class ReadyResponse(_Response):
    ready: bool
    library_version: str | None = None
    prototypes: int = 0
    judge_model: str | None = None
    checks: dict[str, bool] = Field(default_factory=dict)
    detail: str | None = None


class ReloadRequest(_Wire):
    """`POST /v1/admin/reload`: swap the served library for the one in a directory."""

    prototypes_dir: str | None = Field(
        default=None,
        min_length=1,
        description="A prototypes directory on the service's machine. Null: the directory "
        "serving now, read again.",
    )


class ReloadResponse(_Response):
    library_version: str = Field(description="The version serving from now on.")
    previous_version: str = Field(description="The version that served before the reload.")
    changed: bool = Field(description="Whether the version differs from the previous one.")
    prototypes_dir: str
    prototypes: int = Field(description="Prototypes in the library, the fallback included.")
    exemplars: int = Field(description="Exemplar subgoals indexed for routing.")


class ErrorDetail(_Response):
    type: str = Field(description="Machine-readable class, e.g. invalid_request, not_found.")
    message: str
    param: str | None = Field(
        default=None, description="The request field at fault, e.g. `messages[2].tool_call_id`."
    )


class ErrorResponse(_Response):
    """The one error shape every route uses."""

    error: ErrorDetail


# --- OpenRLHF's remote reward-model protocol (POST /get_reward) ----------------------------


class RemoteRMRequest(_Lenient):
    """What OpenRLHF posts to `--remote_rm_url`: one entry per sample in each list.

    `query` is the prompt and the response decoded together, special tokens included;
    `prompts` the prompts as given to the engine; `labels` the dataset's `--label_key` values.
    Older releases send `query` alone.
    """

    query: list[str]
    prompts: list[str] | None = None
    labels: list[Any] | None = None

    @model_validator(mode="after")
    def _same_lengths(self) -> RemoteRMRequest:
        for name in ("prompts", "labels"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.query):
                raise ValueError(f"`{name}` has {len(values)} entries, `query` {len(self.query)}")
        return self


class RemoteRMResponse(_Response):
    """OpenRLHF's expected answer: a reward per sample, always a number."""

    rewards: list[float] = Field(description="The reward per sample, in request order.")
    scores: list[float] = Field(description="The same, read by OpenRLHF's dynamic filtering.")
    extra_logs: dict[str, list[float]] = Field(
        default_factory=dict, description="Per-sample values OpenRLHF logs beside the reward."
    )
