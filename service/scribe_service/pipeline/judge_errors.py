"""Why a judge call gave no verdict: the error tree every backend raises and `Judge` retries on.

`type` is what a failed step reports; `transient` says whether the same call may succeed if
made again (a retry), never whether the step may pass without a verdict: it may not.

    JudgeError
    ├── JudgeUnavailable (judge_unavailable)              cannot connect / model not loaded
    ├── JudgeConnectionLost (judge_connection_lost)       connected, then dropped before replying
    ├── JudgeTimeout (judge_timeout)                      no reply within the timeout
    ├── JudgeHTTPError (judge_http)                       the server answered an error status
    ├── JudgeContextExceeded (judge_context_exceeded)     the prompt does not fit the context
    ├── JudgeInvalidOutput (judge_invalid_output)         a reply that is not a valid verdict
    │   └── JudgeNoLogprobs                               logprob mode: none came back (final)
    └── JudgeLowScoreMass (judge_low_score_mass)          logprob mode: little mass on 0-3
"""

from __future__ import annotations

import re


class JudgeError(Exception):
    type = "judge_error"
    transient = False


class JudgeUnavailable(JudgeError):
    type = "judge_unavailable"
    transient = True


class JudgeConnectionLost(JudgeError):
    """Reached the judge, but the connection broke before a full reply."""

    type = "judge_connection_lost"
    transient = True


class JudgeTimeout(JudgeError):
    type = "judge_timeout"
    transient = True


class JudgeHTTPError(JudgeError):
    type = "judge_http"

    def __init__(self, status_code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"judge answered HTTP {status_code}: {message}")
        self.status_code = status_code
        self.transient = status_code == 429 or status_code >= 500
        self.retry_after = retry_after
        """Seconds the judge asked us to wait (its `Retry-After`), if it said."""


class JudgeContextExceeded(JudgeError):
    """The rendered prompt (plus the tokens asked for) is longer than the judge's context.

    Permanent for this step: the same prompt overflows the same context on every attempt and
    on every replica, so it is never retried. The cure is a judge with a longer context or
    tighter rendering limits (SCRIBE_MAX_STEP_CHARS, SCRIBE_MAX_CONTEXT_CHARS)."""

    type = "judge_context_exceeded"
    # Not transient.


class JudgeInvalidOutput(JudgeError):
    type = "judge_invalid_output"
    transient = True  # sampling again may well produce a valid verdict


class JudgeNoLogprobs(JudgeInvalidOutput):
    """Logprob mode: the answer carried no `top_logprobs` for its score token.

    Reported as invalid output, but never retried: a server that leaves them out (logprobs
    switched off, an engine without them) leaves them out of every identical call, and
    three calls would only triple the time to an explicit failure."""

    transient = False


class JudgeLowScoreMass(JudgeError):
    """Logprob mode: the judge put too little probability on the score tokens to trust."""

    type = "judge_low_score_mass"
    # Not transient: the same prompt gives the same distribution.


# How the engines word "the prompt does not fit" (matched case-insensitively):
# - vLLM's 400: "This model's maximum context length is 4096 tokens. However, you requested
#   5000 tokens (...)", "... and your request has 4000 input tokens (200 > 4096 - 4000)", and
#   "The decoder prompt (length 5000) is longer than the maximum model length of 4096";
# - llama-cpp-python: "Requested tokens (5000) exceed context window of 4096" in-process, and
#   its server answers 400 with OpenAI's wording ("maximum context length", code
#   "context_length_exceeded");
# - llama.cpp's llama-server: 400 "request (5000 tokens) exceeds the available context size
#   (4096 tokens)", type "exceed_context_size_error".
_CONTEXT_EXCEEDED = re.compile(
    r"maximum context length|maximum model length|context_length_exceeded"
    r"|exceeds? (?:the )?(?:available )?context (?:window|size)|exceed_context_size",
    re.IGNORECASE,
)


def is_context_exceeded(message: str) -> bool:
    """Whether an engine's error message says the prompt is longer than its context."""
    return _CONTEXT_EXCEEDED.search(message) is not None
