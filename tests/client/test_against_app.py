"""Both client twins against the real FastAPI app (fake embedder and judge)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from scribe_client import AsyncRewardClient, NotFoundError, RewardClient
from scribe_service.app import create_app
from scribe_service.settings import Settings
from support import FakeEmbedder, FakeJudge

REQUEST = {"completion": "Step 1: Add\n1+1=2\nStep 2: Check\n2-1=1", "outcome": 1.0}


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge(score=3))
    with TestClient(app):  # runs the lifespan; the state stays while the block is open
        yield app


def test_sync_client(app: FastAPI) -> None:
    with RewardClient("http://scribe.test", http_client=TestClient(app)) as client:
        result = client.score(REQUEST)
        assert result.reward == pytest.approx(1.0) and len(result.steps) == 2
        batch = client.score_batch([REQUEST, {**REQUEST, "request_id": "b"}])
        assert [r.request_id for r in batch][1] == "b"
        assert len(client.route({"completion": "Let's add."}).steps) == 1
        listing = client.prototypes()
        assert client.prototype(listing.prototypes[0].id).levels
        assert client.health().status == "ok" and client.ready().ready
        with pytest.raises(NotFoundError):
            client.prototype("nope")
        # The client validates with the same schema, so bad input never leaves the process.
        with pytest.raises(ValidationError):
            client.score({"completion": "a", "options": {"aggregation": "max"}})


@pytest.mark.anyio
async def test_async_client(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as http:
        async with AsyncRewardClient("http://scribe.test", http_client=http) as client:
            result = await client.score(REQUEST)
            assert result.status == "ok" and result.process_reward == pytest.approx(1.0)
            assert (await client.ready()).ready
            assert len(await client.score_batch([REQUEST] * 3)) == 3
