"""The replica pool over in-process OpenAI-compatible judges (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from scribe_service.pipeline.judge import (
    JudgeContextExceeded,
    JudgeHTTPError,
    JudgeUnavailable,
    OpenAIJudge,
    Sampling,
)
from scribe_service.pipeline.replicas import ReplicaPool

VERDICT = json.dumps({"rationale": "r", "failure_modes": [], "score": 2})


class Server:
    """One scripted judge server: up or down (connection refused), optional delay."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.up = True
        self.status = 200
        self.body = "sick"
        self.calls = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": self.name, "owned_by": "vllm"}]})
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return httpx.Response(self.status, text=self.body)
        body = {"choices": [{"message": {"content": VERDICT}, "finish_reason": "stop"}]}
        return httpx.Response(200, json=body | {"usage": {"completion_tokens": 9}})

    def judge(self) -> OpenAIJudge:
        return OpenAIJudge(
            f"http://{self.name}.test/v1", transport=httpx.MockTransport(self.handle)
        )


def _pool(*servers: Server, threshold: int = 2) -> ReplicaPool:
    return ReplicaPool([s.judge() for s in servers], threshold=threshold, check_timeout=1)


async def _complete(pool: ReplicaPool) -> Any:
    return await pool.complete([{"role": "user", "content": "x"}], {}, Sampling())


@pytest.mark.anyio
async def test_calls_go_to_the_replica_with_fewest_in_flight() -> None:
    a, b = Server("a", delay=0.2), Server("b", delay=0.2)
    pool = _pool(a, b)
    results = await asyncio.gather(*(_complete(pool) for _ in range(6)))
    assert (a.calls, b.calls) == (3, 3)
    assert {r.served_by for r in results} == {"http://a.test/v1", "http://b.test/v1"}
    assert all(r.output_tokens == 9 for r in results)
    assert pool.model == "a,b"
    await pool.aclose()


@pytest.mark.anyio
async def test_a_dead_replica_fails_over_at_once_and_is_taken_out() -> None:
    a, b = Server("a"), Server("b")
    pool = _pool(a, b, threshold=2)
    a.up = False
    for _ in range(4):
        assert (await _complete(pool)).served_by == "http://b.test/v1"
    dead = pool.replicas[0]
    assert not dead.health.available and "a.test" in (dead.health.reason or "")
    a.up = True
    assert a.calls == 0
    await pool.check()  # the probe lets it back in
    assert dead.health.available
    await asyncio.gather(*(_complete(pool) for _ in range(4)))
    assert a.calls > 0
    await pool.aclose()


@pytest.mark.anyio
async def test_server_errors_fail_over_but_request_errors_do_not() -> None:
    a, b = Server("a"), Server("b")
    pool = _pool(a, b)
    a.status = 503
    assert (await _complete(pool)).served_by == "http://b.test/v1"
    a.status = b.status = 400  # the request itself is wrong: no other server will like it
    with pytest.raises(JudgeHTTPError):
        await _complete(pool)
    assert (a.calls, b.calls) == (2, 1)  # 503 on a, then b; the 400 once, not passed on
    assert all(r.health.available for r in pool.replicas)
    await pool.aclose()


@pytest.mark.anyio
async def test_a_prompt_too_long_is_not_passed_to_another_replica() -> None:
    a, b = Server("a"), Server("b")
    pool = _pool(a, b, threshold=1)
    a.status, a.body = 400, "This model's maximum context length is 2048 tokens. However, ..."
    with pytest.raises(JudgeContextExceeded):
        await _complete(pool)
    assert (a.calls, b.calls) == (1, 0)  # every replica serves the same model: no failover
    assert all(r.health.available for r in pool.replicas)  # a answered: it is not sick
    await pool.aclose()


@pytest.mark.anyio
async def test_all_replicas_down_is_unavailable_and_they_are_still_tried() -> None:
    a, b = Server("a"), Server("b")
    pool = _pool(a, b, threshold=1)
    a.up = b.up = False
    with pytest.raises(JudgeUnavailable, match="no judge replica could be reached"):
        await _complete(pool)
    with pytest.raises(JudgeUnavailable):
        await pool.check()
    assert not any(r.health.available for r in pool.replicas)
    b.up = True  # no probe yet: a call still tries every replica rather than none
    assert (await _complete(pool)).served_by == "http://b.test/v1"
    await pool.aclose()


@pytest.mark.anyio
async def test_check_passes_while_one_replica_answers() -> None:
    a, b = Server("a"), Server("b")
    pool = _pool(a, b, threshold=1)
    a.up = False
    await pool.check()
    assert [r.health.available for r in pool.replicas] == [False, True]
    await pool.aclose()
