"""llama.cpp in-process on a GGUF model: the judge when no judge server is configured."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from scribe_service.pipeline.backends.base import (
    Completion,
    Messages,
    Sampling,
    output_tokens,
    reply_text,
)
from scribe_service.pipeline.judge_errors import (
    JudgeContextExceeded,
    JudgeInvalidOutput,
    JudgeUnavailable,
    is_context_exceeded,
)
from scribe_service.pipeline.logprob import TOP_LOGPROBS
from scribe_service.pipeline.state_cache import StateCache


class EmbeddedJudge:
    """llama.cpp in-process on a GGUF model: the default when no judge server is configured.

    One model instance cannot run two completions at once, so calls are serialised; the
    blocking work runs in a thread so the event loop stays free for other requests. A RAM
    cache of model states, keyed by token prefix, lets a prompt that starts like an earlier
    one (same system prompt and rubric) skip evaluating that prefix again: on a CPU, prompt
    evaluation is most of a verdict's cost.
    """

    STATE_CACHE_BYTES = 1 << 30

    def __init__(
        self,
        model_path: Path,
        *,
        model: str,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        cache_bytes: int = STATE_CACHE_BYTES,
    ) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_cache import BaseLlamaCache

        self.model = model
        self._llama = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            # llama.cpp's own default is half the cores; the judge is the bottleneck, use them all.
            n_threads=n_threads or os.cpu_count(),
            verbose=False,
        )
        # Not llama-cpp-python's LlamaRAMCache: it counts a fraction of what its entries hold
        # (state_cache.py). This model has no logits_all, so no entry needs its logits rows.
        self.cache: StateCache | None = None
        if cache_bytes:
            self.cache = StateCache(cache_bytes, keep_logits=False)
            self._llama.set_cache(cast(BaseLlamaCache, self.cache))  # its interface, duck-typed
        self._lock = asyncio.Lock()
        # Held by the thread that runs llama.cpp, not by the awaiting coroutine: a call whose
        # caller gave up (a judge timeout cancels the await) keeps running until llama.cpp
        # returns, and a second completion on the same context beside it aborts the process
        # in a GGML_ASSERT. The asyncio lock only keeps waiting calls off the thread pool.
        self._engine = threading.Lock()

    async def check(self) -> None:
        return None

    def tokenize(self, text: str) -> list[int]:
        return list(self._llama.tokenize(text.encode()))

    async def _run(self, messages: Messages, sampling: Sampling, **kwargs: Any) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            with self._engine:
                try:
                    result = self._llama.create_chat_completion(
                        messages=cast(Any, messages),
                        temperature=sampling.temperature,
                        top_p=sampling.top_p,
                        max_tokens=sampling.max_tokens,
                        seed=sampling.seed,
                        **kwargs,
                    )
                except RuntimeError:
                    # "llama_decode returned -1" or a state that would not load. The context's
                    # memory may now disagree with the tokens llama-cpp-python thinks it
                    # holds, and the next call reusing that prefix hits a GGML_ASSERT that
                    # aborts the process: start over from an empty context, still holding the
                    # engine, so a retry runs clean.
                    self._reset()
                    raise
            return cast(dict[str, Any], result)

        async with self._lock:
            try:
                return await asyncio.to_thread(run)
            except ValueError as exc:
                # "Requested tokens (5000) exceed context window of 4096": permanent.
                if is_context_exceeded(str(exc)):
                    raise JudgeContextExceeded(
                        f"the prompt does not fit the embedded judge's context: {exc}"
                    ) from exc
                raise JudgeInvalidOutput(f"embedded judge rejected the prompt: {exc}") from exc
            except RuntimeError as exc:
                raise JudgeUnavailable(
                    f"the embedded judge failed mid-evaluation ({exc}); its context was reset"
                ) from exc

    def _reset(self) -> None:
        llama: Any = self._llama  # untyped, these two
        llama.reset()
        llama._ctx.kv_cache_clear()
        if self.cache is not None:
            self.cache.clear()

    async def complete(
        self, messages: Messages, schema: dict[str, Any], sampling: Sampling
    ) -> Completion:
        body = await self._run(
            messages, sampling, response_format={"type": "json_object", "schema": schema}
        )
        return Completion(reply_text(body), output_tokens(body))

    async def score_token(self, messages: Messages, sampling: Sampling) -> Completion:
        # llama-cpp-python returns logprobs only from a model loaded with logits_all, which
        # keeps n_ctx x n_vocab floats (GBs for the bundled judge). The first sampler of the
        # chain sees the full next-token logits in token-id order, so a logits processor
        # reads them there instead, for free.
        from llama_cpp import Llama, LogitsProcessorList

        seen: list[Any] = []

        def capture(_input_ids: Any, logits: Any) -> Any:
            if not seen:
                seen.append(logits.copy())
            return logits

        body = await self._run(
            messages,
            replace(sampling, max_tokens=1),
            logits_processor=LogitsProcessorList([capture]),
        )
        if not seen:
            raise JudgeInvalidOutput("the embedded judge produced no logits")
        logprobs = Llama.logits_to_logprobs(seen[0])
        top = logprobs.argsort()[::-1][:TOP_LOGPROBS]
        alternatives = tuple(
            (self._llama.detokenize([int(token)]).decode(errors="replace"), float(logprobs[token]))
            for token in top
        )
        return Completion(
            reply_text(body, allow_length=True), output_tokens(body), top_logprobs=alternatives
        )

    async def aclose(self) -> None:
        def close() -> None:
            with self._engine:  # after a call abandoned by its caller has returned
                self._llama.close()

        await asyncio.to_thread(close)
