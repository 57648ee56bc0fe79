"""Test support: repository paths and deterministic stand-ins for the embedder and judge."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from scribe_service.pipeline.embed import Vectors
from scribe_service.pipeline.judge import JudgeError, Messages, Sampling

ROOT = Path(__file__).resolve().parents[1]
PROTOTYPES = ROOT / "prototypes"
DATA = ROOT.parent / "shared" / "data" / "dev"

_WORD = re.compile(r"[a-z]+")


class FakeEmbedder:
    """Bag of hashed words → unit vector: texts sharing words are similar, others nearly not."""

    name = "fake"
    dim = 64

    def encode(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                bucket = int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim
                out[row, bucket] += 1.0
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out


class FakeJudge:
    """Answers with a fixed verdict (or a scripted sequence) and records every prompt."""

    model = "fake-judge"

    def __init__(
        self, replies: Sequence[str | Exception] | None = None, score: int = 2, delay: float = 0
    ) -> None:
        self.replies = list(replies or [])
        self.delay = delay
        self.score = score
        self.prompts: list[Messages] = []
        self.schemas: list[dict[str, Any]] = []
        self.healthy = True

    async def complete(self, messages: Messages, schema: dict[str, Any], sampling: Sampling) -> str:
        self.prompts.append(messages)
        self.schemas.append(schema)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.replies:
            reply = self.replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply
        return json.dumps({"failure_modes": [], "rationale": "fine", "score": self.score})

    async def check(self) -> None:
        if not self.healthy:
            raise JudgeError("fake judge is down")

    async def aclose(self) -> None:
        return None


# --- subprocess servers ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ScriptedJudgeHandler(BaseHTTPRequestHandler):
    """A real OpenAI-compatible judge over HTTP whose reply text a subclass chooses."""

    def reply(self) -> str:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._send({"data": [{"id": "scripted"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        content = self.reply()
        self._send({"choices": [{"message": {"content": content}, "finish_reason": "stop"}]})

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass
