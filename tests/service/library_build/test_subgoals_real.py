"""`--llm-subgoals` with a real judge, for plumbing: three fixture trajectories, MiniLM, the
SmolLM2-135M judge in-process (its grammar enforces the {"subgoal": …} schema). SmolLM2's
subgoals are poor; what is checked is that the model is asked about every derived step, that
what it writes passes the checks for at least one of them, that every other step is counted
as kept, and that the library built from it loads. It never skips."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from scribe_service.library import load_library
from scribe_service.library_build.build import BuildOptions, build_library
from scribe_service.library_build.decompose import decompose, read_build_records
from scribe_service.library_build.distil import COMPACT
from scribe_service.library_build.write import MANIFEST
from scribe_service.pipeline.embed import SentenceTransformerEmbedder
from scribe_service.pipeline.judge import EmbeddedJudge
from scribe_service.settings import BUNDLED_EMBEDDER, Settings
from support import FIXTURES, PROTOTYPES, smollm2_gguf

pytestmark = [pytest.mark.real, pytest.mark.anyio]


async def test_llm_subgoals_from_a_real_judge_build_a_library_that_loads(tmp_path: Path) -> None:
    data = tmp_path / "three.jsonl"
    lines = (FIXTURES / "hotpotqa_agent.jsonl").read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    derived = [s for s in decompose(read_build_records(data)) if s.step.subgoal_source == "derived"]
    out = tmp_path / "built"
    embedder = SentenceTransformerEmbedder(BUNDLED_EMBEDDER)
    backend = EmbeddedJudge(smollm2_gguf(), model="smollm2-135m", n_ctx=4096, n_threads=2)
    try:
        result = await build_library(
            # With the shipped library as base, the output serves whether or not three
            # trajectories hold a cluster; COMPACT keeps a distillation short if one does.
            BuildOptions(
                data=data,
                out=out,
                base=PROTOTYPES,
                llm_subgoals=True,
                threshold=0.3,
                limits=COMPACT,
                max_tokens=700,
                max_attempts=3,
            ),
            backend=backend,
            embedder=embedder,
            shipped=PROTOTYPES,
            min_similarity=Settings().min_similarity,
        )
    finally:
        await backend.aclose()

    counts = result.report["llm_subgoals"]
    assert counts["asked"] == len(derived) > 0
    assert counts["rewritten"] >= 1, counts["failures"]
    assert counts["rewritten"] + counts["kept_on_failure"] == counts["asked"]
    assert len(counts["failures"]) == min(counts["kept_on_failure"], 5)
    library = load_library(out)
    assert library.version == result.library.version
    manifest = tomllib.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["parameters"]["llm_subgoals"] is True
