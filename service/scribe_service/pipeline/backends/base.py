"""The contract between `Judge` and a backend, and the chat-completion reply shape they share.

Sampling (temperature, top_p, seed, max_tokens) is sent on every call, never left to the
server's defaults (vLLM would apply the model's generation_config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from scribe_service.pipeline.judge_errors import JudgeInvalidOutput

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    max_tokens: int = 200
    seed: int | None = 0
    top_p: float = 1.0


@dataclass(frozen=True)
class Completion:
    """What a backend got back for one call."""

    text: str
    output_tokens: int | None = None
    """Tokens generated, from the server's `usage` (None when it did not say)."""
    top_logprobs: tuple[tuple[str, float], ...] | None = None
    """The first output token's most likely alternatives, (token, logprob), when asked for."""
    served_by: str | None = None


class JudgeBackend(Protocol):
    @property
    def model(self) -> str:
        """The judge model's name, reported with every score."""
        ...

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        """The judge's reply under `schema`, or a `JudgeError`."""
        ...

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        """One output token with its `TOP_LOGPROBS` alternatives (logprob mode)."""
        ...

    async def check(self) -> None:
        """Return if the judge can answer now, else raise a `JudgeError`."""
        ...

    async def aclose(self) -> None: ...


def reply_text(body: dict[str, Any], allow_length: bool = False) -> str:
    """The first choice's message text; a reply cut off at max_tokens is invalid unless
    `allow_length` (a one-token score call always stops on length)."""
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise JudgeInvalidOutput(f"judge reply has no message content: {body!r:.200}") from exc
    if choice.get("finish_reason") == "length" and not allow_length:
        raise JudgeInvalidOutput("judge reply was cut off at max_tokens")
    if content is None and allow_length:
        content = ""
    if not isinstance(content, str):
        raise JudgeInvalidOutput(f"judge message content is not text: {content!r:.200}")
    return content


def output_tokens(body: dict[str, Any]) -> int | None:
    usage = body.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else None
