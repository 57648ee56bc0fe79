"""The pure parts of bench/overhead.py (the per-step profile and the before/after comparison
of the service's own cost); the runs themselves start services and take minutes, and are run
by hand, never here."""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path
from typing import Any

import pytest

from scribe_service.settings import Settings
from support import ROOT, fixture_records, load_bench

overhead = load_bench("overhead")
suite = sys.modules["suite"]  # as overhead.py imported it


def _records() -> dict[str, list[dict[str, Any]]]:
    return {
        overhead.SOURCES[0]: fixture_records("hotpot"),
        overhead.SOURCES[1]: fixture_records("processbench"),
    }


def _tasks(rollouts: list[dict[str, Any]]) -> set[str]:
    """The task of each rollout: its first user message."""
    return {next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rollouts}


def test_rounds_never_repeat_a_group_of_another_round_or_of_the_warm_up() -> None:
    warm_up, rounds = overhead.workloads(_records(), rounds=3, per_round=2)
    assert len(rounds) == 3
    seen = _tasks(warm_up)
    assert len(seen) == 2  # one group of each corpus
    for rollouts in rounds:
        # One group of each corpus, GROUP_SIZE rollouts each, sharing their task.
        assert len(rollouts) == 2 * suite.GROUP_SIZE
        tasks = _tasks(rollouts)
        assert len(tasks) == 2
        assert not tasks & seen
        seen |= tasks


def test_a_workload_larger_than_the_records_is_refused() -> None:
    with pytest.raises(ValueError, match="usable tasks"):
        overhead.workloads(_records(), rounds=2, per_round=4)


def _busy() -> int:
    return sum(range(20_000))


def test_the_top_table_is_per_judged_step() -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(6):
        _busy()
    profiler.disable()
    stats = pstats.Stats(profiler)

    lines = overhead.top(stats, 3, steps=3, count=50)

    [row] = [line for line in lines if line.endswith(f"_busy (test_overhead.py:{_busy_line()})")]
    own_ms, cum_ms, calls = (float(field) for field in row.split()[:3])
    assert calls == 2.0  # 6 calls over 3 steps
    assert 0 < own_ms <= cum_ms
    by_cumulative = [float(line.split()[1]) for line in lines[1:]]
    assert by_cumulative == sorted(by_cumulative, reverse=True)


def _busy_line() -> int:
    return _busy.__code__.co_firstlineno


def test_a_uvicorn_choice_is_a_loop_and_a_parser() -> None:
    assert overhead.uvicorn_choice("uvloop,httptools") == ("uvloop", "httptools")
    for bad in ("asyncio", ",h11", "asyncio,"):
        with pytest.raises(argparse.ArgumentTypeError, match="LOOP,HTTP"):
            overhead.uvicorn_choice(bad)


def test_a_side_with_uvicorn_forced_runs_this_script_and_the_other_scribe_serve() -> None:
    assert overhead.serve_command(None) == suite.SERVE_COMMAND
    script, flag, choice = overhead.serve_command(("asyncio", "h11"))
    assert (Path(script), flag, choice) == (
        ROOT / "bench" / "overhead.py",
        "--serve-uvicorn",
        "asyncio,h11",
    )
    assert overhead.uvicorn_choice(choice) == ("asyncio", "h11")  # what --serve-uvicorn parses


def test_forcing_uvicorn_reaches_the_run_call_of_scribe_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cli.py's serve calls `uvicorn.run` without loop or http: the forced pair must be what
    uvicorn is finally given, whatever else serve passes."""
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    overhead.force_uvicorn("asyncio", "h11")
    from scribe_service.cli import main

    assert main(["serve"]) == 0
    [given] = calls
    assert (given["loop"], given["http"]) == ("asyncio", "h11")
    assert given["port"] == Settings().port  # serve's own arguments still arrive
