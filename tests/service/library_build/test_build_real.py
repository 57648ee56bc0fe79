"""A real build, for plumbing: six fixture trajectories, MiniLM, the SmolLM2-135M judge
in-process (its grammar enforces the draft schema), then the built library served and used to
score. SmolLM2's rubrics are poor; what is checked is that a valid prototype comes out of a
real judge, loads, and takes steps away from the fallback. If the small judge cannot write a
valid prototype the test fails: it never skips."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from scribe_client.protocol import ScoreRequest
from scribe_service.app import build_pipeline
from scribe_service.library import load_library
from scribe_service.library_build.build import BuildResult
from scribe_service.pipeline.embed import Embedder
from scribe_service.pipeline.judge import EmbeddedJudge
from scribe_service.settings import Settings
from support import FIXTURES

pytestmark = [pytest.mark.real, pytest.mark.anyio]


def _six_trajectories(path: Path) -> Path:
    hotpot = (FIXTURES / "hotpotqa_agent.jsonl").read_text(encoding="utf-8").splitlines()
    math = (FIXTURES / "processbench_math.jsonl").read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*hotpot[:4], *math[:2]]) + "\n", encoding="utf-8")
    return path


async def test_a_library_built_by_a_real_judge_loads_and_routes_steps(
    tmp_path: Path,
    real_build: Callable[..., Awaitable[BuildResult]],
    minilm: Embedder,
    smollm2: EmbeddedJudge,
) -> None:
    data = _six_trajectories(tmp_path / "six.jsonl")
    out = tmp_path / "built"
    # Six trajectories hold one cluster of at least five distinct subgoals at 0.3 (the
    # search calls).
    result = await real_build(data, out, threshold=0.3, min_size=5)
    assert result.built, f"no valid prototype from SmolLM2: {result.report['failed']}"
    library = load_library(out)
    assert set(result.built) <= set(library.prototypes)
    assert library.fallback.id == "generic_step"

    settings = Settings(prototypes_dir=out, cache_dir=tmp_path / "cache")
    pipeline = await build_pipeline(settings, embedder=minilm, judge_backend=smollm2)
    assert pipeline.library.version == result.library.version
    record = json.loads((FIXTURES / "hotpotqa_agent.jsonl").read_text().splitlines()[0])
    response = await pipeline.score(
        ScoreRequest.model_validate({"messages": record["messages"], "tools": record["tools"]})
    )
    assert response.library_version == library.version
    routed = [s for s in response.steps if s.prototype_id in result.built]
    assert routed and not any(s.fallback for s in routed), [
        (s.prototype_id, s.similarity) for s in response.steps
    ]
