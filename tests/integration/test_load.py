"""A small version of bench/load.py in the suite: concurrent clients against `scribe serve`
with a real judge and a tight admission bound. Nothing may be lost: every request is scored
or told to come back (429 with Retry-After)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from support import run_load, scribe_server

pytestmark = pytest.mark.real


def test_overload_loses_nothing(small_judge_url: str, tmp_path: Path) -> None:
    env = {
        "SCRIBE_JUDGE_URL": small_judge_url,
        "SCRIBE_JUDGE_DIALECT": "json_object",
        "SCRIBE_MAX_PENDING": "3",
        "SCRIBE_RETRY_AFTER": "1",
    }
    with scribe_server(tmp_path / "scribe.log", env) as url:
        report = asyncio.run(run_load(url, clients=8, requests=4, max_seconds=120))
    assert report.lost == []
    assert report.sent == 32 == report.completed + report.rejected
    assert report.rejected > 0, "8 clients against 3 admitted must see 429s"
    assert report.completed >= 3
    # SmolLM2 is a poor judge but a real one: its verdicts must validate, not fail.
    assert report.statuses.get("ok", 0) >= report.completed // 2
