"""`--llm-subgoals` with a real judge, for plumbing: three fixture trajectories, MiniLM, the
SmolLM2-135M judge in-process (its grammar enforces the {"subgoal": …} schema). SmolLM2's
subgoals are poor; what is checked is that the model is asked about every derived step, that
what it writes passes the checks for at least one of them, that every other step is counted
as kept, and that the library built from it loads. It never skips."""

from __future__ import annotations

import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from scribe_service.library import load_library
from scribe_service.library_build.build import BuildResult
from scribe_service.library_build.decompose import decompose, read_build_records
from scribe_service.library_build.write import MANIFEST
from support import FIXTURES, PROTOTYPES

pytestmark = [pytest.mark.real, pytest.mark.anyio]


async def test_llm_subgoals_from_a_real_judge_build_a_library_that_loads(
    tmp_path: Path, real_build: Callable[..., Awaitable[BuildResult]]
) -> None:
    data = tmp_path / "three.jsonl"
    lines = (FIXTURES / "hotpotqa_agent.jsonl").read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    derived = [s for s in decompose(read_build_records(data)) if s.step.subgoal_source == "derived"]
    out = tmp_path / "built"
    # With the shipped library as base, the output serves whether or not three trajectories
    # hold a cluster.
    result = await real_build(data, out, base=PROTOTYPES, llm_subgoals=True, threshold=0.3)

    counts = result.report["llm_subgoals"]
    assert counts["asked"] == len(derived) > 0
    assert counts["rewritten"] >= 1, counts["failures"]
    assert counts["rewritten"] + counts["kept_on_failure"] == counts["asked"]
    assert len(counts["failures"]) == min(counts["kept_on_failure"], 5)
    library = load_library(out)
    assert library.version == result.library.version
    manifest = tomllib.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["parameters"]["llm_subgoals"] is True
