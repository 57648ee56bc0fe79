"""The judge server client's connection pools (`backends.openai.OpenAIJudge`), against a real
HTTP/1.1 server on loopback: every call in flight gets a connection at once, and connections
are kept alive across calls."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

import pytest
from httpcore._synchronization import current_async_library

from scribe_service.pipeline.backends import openai
from scribe_service.pipeline.backends.base import Sampling
from scribe_service.pipeline.backends.openai import OpenAIJudge

REPLY = {
    "choices": [
        {
            "message": {"content": "2"},
            "finish_reason": "length",
            "logprobs": {
                "content": [{"token": "2", "top_logprobs": [{"token": "2", "logprob": 0}]}]
            },
        }
    ]
}


@dataclass
class HeldServer:
    """Answers chat-completion calls only once `hold` of them are waiting at the same time,
    so a call that the client queued behind another never gets an answer; records the
    connections it accepted."""

    hold: int
    connections: int = 0
    waiting: list[asyncio.Future[None]] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:  # the client closed the connection
                writer.close()
                return
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            released = asyncio.get_running_loop().create_future()
            self.waiting.append(released)
            if len(self.waiting) == self.hold:
                for future in self.waiting:
                    future.set_result(None)
                self.waiting = []
            await released
            body = json.dumps(REPLY).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()


@pytest.fixture
async def held() -> AsyncIterator[tuple[HeldServer, str]]:
    server = HeldServer(hold=6)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server, f"http://127.0.0.1:{port}/v1"


@pytest.mark.anyio
async def test_every_call_in_flight_gets_a_connection_at_once_and_keeps_it(
    held: tuple[HeldServer, str],
) -> None:
    server, url = held
    # 6 calls over pools of SHARD_CONNECTIONS: none may wait behind another in its pool.
    judge = OpenAIJudge(url, model="judge", dialect="json_schema", max_connections=6)
    messages = [{"role": "user", "content": "Rate this step."}]
    try:
        for _ in range(3):
            async with asyncio.timeout(10):
                replies = await asyncio.gather(
                    *(judge.score_token(messages, Sampling()) for _ in range(6))
                )
            assert [r.top_logprobs for r in replies] == [(("2", 0.0),)] * 6
    finally:
        await judge.aclose()
    assert server.connections == 6  # 18 calls, and no connection opened after the first 6
    assert len(judge._clients) == 6 // openai.SHARD_CONNECTIONS


class RecordingFinder:
    """A meta path finder that only notes which modules the import system searched for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def find_spec(
        self, name: str, path: Any, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        self.asked.append(name)
        return None


def test_httpcore_finds_sniffio_without_searching_sys_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sniffio is a service dependency: httpcore imports it for every request, lock and
    event, and a missing one is searched for on every sys.path entry each time (about 5 ms of
    CPU per judged step at 64 calls in flight, bench/overhead.py)."""

    async def twice() -> list[str]:  # sniffio answers inside a running event loop only
        return [current_async_library(), current_async_library()]

    finder = RecordingFinder()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    assert asyncio.run(twice()) == ["asyncio", "asyncio"]
    assert "sniffio" not in finder.asked
