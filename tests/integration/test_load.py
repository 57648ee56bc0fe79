"""A small version of bench/load.py in the suite: concurrent clients against `scribe serve`
with a real judge and a tight admission bound. Nothing may be lost: a client told to come back
(429 with Retry-After) does, and every request ends with a 200 before its deadline; with a
healthy judge every step of every answer is judged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from support import run_load, scribe_server, uvicorn_in_thread

# Three times as many clients as admitted places: refusals are certain, and 12 requests of
# real judging keep the test near a minute.
CLIENTS, REQUESTS, MAX_PENDING = 6, 2, 2


def test_a_request_never_admitted_by_its_deadline_is_lost() -> None:
    """The load client's own honesty: retrying a 429 is not a free pass, a request that gets no
    200 before its deadline counts as lost."""
    refusals = 0

    async def always_busy(request: Request) -> JSONResponse:
        nonlocal refusals
        refusals += 1
        return JSONResponse({"error": {"type": "overloaded"}}, 429, {"Retry-After": "1"})

    app = Starlette(routes=[Route("/v1/score", always_busy, methods=["POST"])])
    with uvicorn_in_thread(app) as url:
        report = asyncio.run(run_load(url, clients=2, requests=1, max_seconds=60, deadline=2.5))
    assert report.sent == 2 and report.completed == 0
    assert len(report.lost) == 2 and all("no 200 within 2.5s" in lost for lost in report.lost)
    # Each tried again after the second it was told to wait, and gave up at its deadline.
    assert report.rejected == refusals >= 4 and report.retried == 0


@pytest.mark.real
def test_overload_loses_nothing(small_judge_url: str, tmp_path: Path) -> None:
    env = {
        "SCRIBE_JUDGE_URL": small_judge_url,
        "SCRIBE_JUDGE_DIALECT": "json_object",
        "SCRIBE_MAX_PENDING": str(MAX_PENDING),
        "SCRIBE_RETRY_AFTER": "1",
        # A slow verdict on a busy machine is not what this test is about: wait for it.
        "SCRIBE_JUDGE_TIMEOUT": "600",
    }
    with scribe_server(tmp_path / "scribe.log", env) as url:
        report = asyncio.run(
            run_load(url, clients=CLIENTS, requests=REQUESTS, max_seconds=600, deadline=600)
        )
    total = CLIENTS * REQUESTS
    assert report.lost == []
    assert report.sent == total == report.completed
    # Admission control did refuse, and the refused requests came back and were scored.
    assert report.rejected > 0, f"{CLIENTS} clients against {MAX_PENDING} admitted must see 429s"
    assert report.retried > 0
    assert report.unavailable == 0  # the judge was up all along: no 503
    # SmolLM2 is a poor judge but a healthy one: its verdicts are held to the schema, so every
    # step is judged.
    assert report.failed_steps == 0 and report.statuses == {"ok": total}, report.statuses
