"""Every response carries `X-Request-ID`: the caller's own id when it sent a usable one, else a
new one, so a failed reward in a trainer's log can be found in the service's log.

The app wires asgi-correlation-id's `CorrelationIdMiddleware` with `HEADER` and
`acceptable_request_id`: it reads and sets the header and the context variable that puts the
id on every log record (`logs`). `AccessLogMiddleware`, just inside it, ends each request with
one access line (method, path, status, duration)."""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
# A trainer's own ids (`trainer-step-7/3`, uuids, …) are kept; anything that could break a log
# line or a header (spaces, control characters, overlong) is replaced by a fresh id.
_ACCEPTABLE = re.compile(r"[\w.:@/+=-]{1,200}")

access_log = logging.getLogger("scribe_service.access")


def acceptable_request_id(value: str) -> bool:
    return _ACCEPTABLE.fullmatch(value) is not None


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )
