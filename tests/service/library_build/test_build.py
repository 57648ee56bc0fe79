"""The whole build with fakes at the two model seams (embedder, judge): what reaches the
directory, that it loads as a library, the merge with a base, failures, the manifest, coverage.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from scribe_service.cli import main
from scribe_service.library import load_library
from scribe_service.library_build.build import BuildOptions, BuildResult, build_library
from scribe_service.library_build.decompose import data_digest
from scribe_service.library_build.errors import BuildError
from scribe_service.library_build.journal import JournaledBackend, journal_path, read_journal
from scribe_service.library_build.write import MANIFEST, REPORT_JSON, REPORT_MD
from scribe_service.pipeline.backends.base import Completion, Messages, Sampling
from support import PROTOTYPES, FakeEmbedder, FakeJudge

pytestmark = pytest.mark.anyio

SKETCH = [
    "Sketch the triangle and label its sides",
    "Sketch the square and label its corners",
    "Sketch the circle and label its radius",
    "Sketch the trapezoid and label its bases",
    "Sketch the rectangle and label its sides",
    "Sketch the hexagon and label its corners",
]
CONVERT = [  # one of them is an exemplar of the shipped arithmetic_computation
    "Convert the time from minutes to hours",
    "Convert the time from hours to minutes",
    "Convert the time from hours to days",
    "Convert the time from days to hours",
    "Convert the time from seconds to minutes",
]
LONELY = "Celebrate with a slice of cake"


def _records() -> list[dict[str, Any]]:
    subgoals = [*SKETCH, *CONVERT, LONELY]
    records = []
    for n in range(3):
        chunk = subgoals[n::3]
        messages = [{"role": "user", "content": "A geometry and units task."}]
        messages += [
            {"role": "assistant", "content": f"Step {i + 1}: {s}\nDone."}
            for i, s in enumerate(chunk)
        ]
        labels = {str(i): (1 if i % 2 else -1) for i in range(1, len(messages))}
        records.append(
            {
                "id": f"r{n}",
                "source": "test",
                "task": "t",
                "messages": messages,
                "step_labels": labels,
            }
        )
    return records


def _draft(name: str) -> str:
    return json.dumps(
        {
            "name": name,
            "domain": "math",
            "usage_context": "When a step carries out this skill on the problem's objects.",
            "reasoning_pattern": "A careful solver does it all, correctly, and says so.",
            "levels": {
                "3": "Complete and correct.",
                "2": "Correct with a harmless slip.",
                "1": "A real error in the work.",
                "0": "Wrong or not attempted.",
            },
            "failure_modes": [
                {"id": "slip", "description": "A value is written wrongly.", "max_score": 1}
            ],
        }
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()), encoding="utf-8")
    return path


async def _build(options: BuildOptions, judge: FakeJudge) -> BuildResult:
    return await build_library(
        options, backend=judge, embedder=FakeEmbedder(), shipped=PROTOTYPES, min_similarity=0.5
    )


async def test_a_new_library_serves_with_the_shipped_fallback_and_templates(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lib"
    judge = FakeJudge(replies=[_draft("Figure sketching"), _draft("Unit conversion")])
    result = await _build(BuildOptions(data=data, out=out, threshold=0.5), judge)

    library = load_library(out)
    assert set(library.prototypes) == {"generic_step", "figure_sketching", "unit_conversion"}
    assert library.version == result.library.version
    assert (out / "generic_step.toml").read_bytes() == (
        PROTOTYPES / "generic_step.toml"
    ).read_bytes()
    assert set(library.prototypes["figure_sketching"].exemplars) == set(SKETCH)
    assert set(library.prototypes["unit_conversion"].exemplars) == set(CONVERT)
    # Largest cluster first; one judge call each; members shown with their labels.
    assert len(judge.prompts) == 2 and "Sketch the" in judge.prompts[0][1]["content"]
    assert "judged wrong" in judge.prompts[0][1]["content"]

    manifest = tomllib.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["library_version"] == library.version
    assert manifest["data_sha256"] == data_digest(data)
    assert manifest["judge_model"] == "fake-judge" and manifest["embedding_model"] == "fake"
    assert manifest["built"] == ["figure_sketching", "unit_conversion"]
    assert manifest["parameters"]["threshold"] == 0.5 and manifest["parameters"]["min_size"] == 5

    report = json.loads((out / REPORT_JSON).read_text(encoding="utf-8"))
    assert [c["subgoals"] for c in report["clusters"]] == [6, 5]
    assert report["clusters"][0]["outcome"].startswith("built figure_sketching")
    assert report["dropped"] == [{"subgoals": 1, "examples": [LONELY]}]
    # Every step but the lonely one now routes to its own exemplar.
    assert report["coverage"]["after"] == round(11 / 12, 4)
    assert report["coverage"]["routed_to_built"] == round(11 / 12, 4)
    # Before: the shipped library, the baseline a build without --base is measured against.
    assert 0.0 <= report["coverage"]["before"] <= 1.0
    assert report["coverage"]["before_library"].startswith(str(PROTOTYPES))
    assert "figure_sketching" in (out / REPORT_MD).read_text(encoding="utf-8")


async def test_with_a_base_a_close_cluster_extends_a_prototype_instead_of_duplicating(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lib"
    judge = FakeJudge(replies=[_draft("Figure sketching")])
    result = await _build(
        BuildOptions(data=data, out=out, base=PROTOTYPES, threshold=0.5, merge_threshold=0.6),
        judge,
    )
    base, library = load_library(PROTOTYPES), load_library(out)
    assert result.extended == ("arithmetic_computation",) and result.built == ("figure_sketching",)
    assert len(judge.prompts) == 1  # only the new skill was distilled
    assert set(library.prototypes) == {*base.prototypes, "figure_sketching"}
    grown = library.prototypes["arithmetic_computation"]
    before = base.prototypes["arithmetic_computation"]
    assert grown.exemplars[: len(before.exemplars)] == before.exemplars
    assert set(grown.exemplars) == set(before.exemplars) | set(CONVERT)
    assert grown.levels == before.levels and grown.failure_modes == before.failure_modes
    # Base prototypes the build did not touch are copied byte for byte.
    for name in ("case_analysis.toml", "generic_step.toml"):
        assert (out / name).read_bytes() == (PROTOTYPES / name).read_bytes()


async def test_a_cluster_that_fails_is_reported_and_left_out(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "lib"
    judge = FakeJudge(replies=["not json"] * 2 + [_draft("Unit conversion")])
    result = await _build(BuildOptions(data=data, out=out, max_attempts=2), judge)
    assert result.built == ("unit_conversion",)
    [failed] = result.report["failed"]
    assert failed["key"] == "cluster_0" and failed["attempts"] == 2
    assert set(load_library(out).prototypes) == {"generic_step", "unit_conversion"}
    assert "gave no valid prototype" in (out / REPORT_MD).read_text(encoding="utf-8")


async def test_a_built_library_can_be_the_base_of_the_next(data: Path, tmp_path: Path) -> None:
    first = await _build(
        BuildOptions(data=data, out=tmp_path / "one"),
        FakeJudge(replies=[_draft("Figure sketching"), _draft("Unit conversion")]),
    )
    second = await _build(
        BuildOptions(data=data, out=tmp_path / "two", base=first.out), FakeJudge(replies=[])
    )
    # Every cluster is now one of the base's own prototypes: nothing new, nothing distilled.
    assert second.built == () and set(second.extended) <= {"figure_sketching", "unit_conversion"}
    assert set(load_library(second.out).prototypes) == set(first.library.prototypes)


async def test_ids_never_collide_with_the_base_or_the_manifest(data: Path, tmp_path: Path) -> None:
    judge = FakeJudge(replies=[_draft("Library"), _draft("Case analysis")])
    result = await _build(
        BuildOptions(data=data, out=tmp_path / "lib", base=PROTOTYPES, merge_threshold=0.99), judge
    )
    assert set(result.built) == {"skill_library", "case_analysis_2"}


class Killed(BaseException):
    """What a SIGKILL is to the build: nothing after it runs (not an Exception to catch)."""


class DiesAfter(FakeJudge):
    def __init__(self, replies: list[str], calls: int) -> None:
        super().__init__(replies=replies)
        self.left = calls

    async def complete(
        self, messages: Messages, schema: dict[str, object], sampling: Sampling
    ) -> Completion:
        if self.left == 0:
            raise Killed
        self.left -= 1
        return await super().complete(messages, schema, sampling)


async def test_a_killed_build_resumes_where_it_stopped(data: Path, tmp_path: Path) -> None:
    replies = ["not json", _draft("Figure sketching"), _draft("Unit conversion")]

    async def build(out: Path, judge: FakeJudge) -> JournaledBackend:
        backend = JournaledBackend(judge, journal_path(out))
        await build_library(
            BuildOptions(data=data, out=out, max_attempts=2),
            backend=backend,
            embedder=FakeEmbedder(),
            shipped=PROTOTYPES,
            min_similarity=0.5,
        )
        return backend

    whole = await build(tmp_path / "whole", FakeJudge(replies=list(replies)))
    assert whole.replayed == 0
    out = tmp_path / "lib"
    with pytest.raises(Killed):  # killed during the second cluster, after two replies
        await build(out, DiesAfter(list(replies), calls=2))
    assert not out.exists() and len(read_journal(journal_path(out))) == 2
    rest = FakeJudge(replies=replies[2:])
    resumed = await build(out, rest)
    assert (resumed.resumed, resumed.replayed, len(rest.prompts)) == (2, 2, 1)
    built, reference = load_library(out), load_library(tmp_path / "whole")
    wanted = {"generic_step", "figure_sketching", "unit_conversion"}
    assert set(built.prototypes) == set(reference.prototypes) == wanted
    assert built.version == reference.version


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--min-size", "3"], "at least 5"),
        (["--threshold", "1.5"], "threshold"),
    ],
)
def test_cli_refuses_bad_options_before_loading_models(
    data: Path, tmp_path: Path, args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["library", "build", str(data), "--out", str(tmp_path / "lib"), *args])
    assert code == 2 and error in capsys.readouterr().err


def test_cli_refuses_an_existing_output(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["library", "build", str(data), "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_options_are_checked() -> None:
    with pytest.raises(BuildError, match="max-exemplars"):
        BuildOptions(data=PROTOTYPES, out=Path("x"), max_exemplars=2).check()
