"""The pure parts of bench/overhead.py (the per-step profile and the before/after comparison
of the service's own cost); the runs themselves start services and take minutes, and are run
by hand, never here."""

from __future__ import annotations

import cProfile
import importlib.util
import pstats
import sys
from types import ModuleType
from typing import Any

import pytest

from support import ROOT, fixture_records


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))  # overhead.py imports the suite as `suite`
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


overhead = _load("overhead")
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
