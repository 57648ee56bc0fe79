"""Request limits: a body-size cap enforced while the body streams in, and per-trajectory caps
on steps and step length checked after segmentation.

A reward service sits in a training loop; one runaway rollout (a degenerate 2 MB completion, a
trajectory of thousands of turns) must get a clear 4xx, not stall every other request behind it.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scribe_service.errors import error_response


@dataclass(frozen=True)
class InputLimits:
    max_steps: int
    max_step_chars: int


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max:
            await self._reject(scope, receive, send)
            return
        seen = 0
        rejected = False

        async def counting_receive() -> Message:
            # Chunked bodies declare no length: count what actually arrives, and once over the
            # limit answer 413 ourselves and tell the app the client has gone.
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self._max:
                rejected = True
                await self._reject(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:  # the app's own answer to a rejected request goes nowhere
                await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, f"request body larger than {self._max} bytes (SCRIBE_MAX_BODY_BYTES)"
        )
        await response(scope, receive, send)
