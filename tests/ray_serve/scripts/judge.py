"""A stand-in OpenAI-compatible judge for tests/ray_serve, in its own process (main venv): answers
every step with a fixed verdict, after a delay the test sets (`POST /control {"delay": s}`),
and counts the calls it answered (`GET /calls`). Usage: judge.py PORT"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import uvicorn

VERDICT = json.dumps({"failure_modes": [], "rationale": "fine", "score": 2})
state: dict[str, float] = {"delay": 0.0, "calls": 0}


async def app(scope: Any, receive: Any, send: Any) -> None:
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
    if scope["path"] == "/control":
        state["delay"] = float(json.loads(body)["delay"])
        answer = {}
    elif scope["path"] == "/calls":
        answer = {"calls": state["calls"]}
    elif scope["method"] == "GET":
        answer = {"data": [{"id": "stand-in"}]}
    else:
        await asyncio.sleep(state["delay"])
        state["calls"] += 1
        choice = {"message": {"content": VERDICT}, "finish_reason": "stop"}
        answer = {"choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    data = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
