"""A stand-in OpenAI-compatible judge: a raw ASGI app that answers every call at once (or
after a delay a test sets), for measuring and testing the service around its judge.

bench/suite.py runs it as the zero-latency judge; tests/ray_serve slows it down and counts its
calls. Raw ASGI under uvicorn: one event loop for any number of calls in flight, as a real
judge server has, instead of a thread per connection; uvicorn also turns Nagle off
(http.server left it on, and each call waited 40 ms for a delayed ACK).

    python tests/standin_judge.py PORT

Besides `/v1/models` and `/v1/chat/completions`: `POST /control {"delay": s}` sets the delay
before each answer, `GET /calls` says how many chat calls were answered.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

VERDICT = {"failure_modes": [], "rationale": "fine", "score": 2}


def reply(payload: dict[str, Any]) -> dict[str, Any]:
    """The answer to one chat call: a logprob call gets all its mass on "2", a verdict call
    a fixed verdict."""
    choice: dict[str, Any]
    if payload.get("logprobs"):
        top = [{"token": "2", "logprob": 0.0}, {"token": "3", "logprob": -9.0}]
        choice = {
            "message": {"content": "2"},
            "finish_reason": "length",
            "logprobs": {"content": [{"token": "2", "logprob": 0.0, "top_logprobs": top}]},
        }
    else:
        choice = {"message": {"content": json.dumps(VERDICT)}, "finish_reason": "stop"}
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    return {"choices": [choice], "usage": usage}


class StandInJudge:
    """The ASGI app; `delay` and `calls` are what /control sets and /calls reads. A chat call
    whose body holds `refuse` is answered 400 (and counted), for a test's failed step; one
    whose body holds `hold`'s bytes waits `hold`'s seconds first. `chats` keeps every chat
    call's messages in the order the calls arrived."""

    def __init__(
        self, refuse: bytes | None = None, hold: tuple[bytes, float] | None = None
    ) -> None:
        self.delay = 0.0
        self.calls = 0
        self.chats: list[list[dict[str, str]]] = []
        self._refuse = refuse
        self._hold = hold

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer: dict[str, Any]
        status = 200
        if scope["path"] == "/control":
            self.delay = float(json.loads(body)["delay"])
            answer = {}
        elif scope["path"] == "/calls":
            answer = {"calls": self.calls}
        elif scope["method"] == "GET":
            answer = {"data": [{"id": "stand-in", "owned_by": "scribe-tests"}]}
        else:
            payload = json.loads(body)
            if scope["path"].endswith("/chat/completions"):
                self.chats.append(payload["messages"])
            if self._hold is not None and self._hold[0] in body:
                await asyncio.sleep(self._hold[1])
            if self.delay:
                await asyncio.sleep(self.delay)
            self.calls += 1
            if self._refuse is not None and self._refuse in body:
                status, answer = 400, {"error": {"message": "refused by the test"}}
            else:
                answer = reply(payload)
        data = json.dumps(answer).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(StandInJudge(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
