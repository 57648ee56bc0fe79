"""`scribe library refresh` with fakes at the two model seams: the base stays byte for byte,
new prototypes are added from the misses, rotated logs are read, unusable logs are refused,
and the result serves: a former miss now routes to its new prototype."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from scribe_service.cli import main
from scribe_service.library import MANIFEST, load_library
from scribe_service.library_build.build import BuildResult
from scribe_service.library_build.errors import BuildError
from scribe_service.library_build.refresh import (
    RefreshOptions,
    miss_files,
    read_misses,
    refresh_library,
)
from scribe_service.library_build.write import REPORT_JSON, REPORT_MD
from scribe_service.pipeline.retrieve import PrototypeIndex
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
MIN_SIMILARITY = 0.8
"""High for the bag-of-words fake embedder, whose common words collide across 64 buckets:
below it no shipped exemplar is close to a sketching subgoal."""


def _miss(subgoal: str, n: int, version: str = "v1") -> dict[str, Any]:
    return {
        "time": "2026-12-01T21:40:02.118+00:00",
        "request_id": f"req-{n}",
        "metadata": {"global_step": n},
        "library_version": version,
        "step": 0,
        "message_index": 1,
        "subgoal": subgoal,
        "subgoal_source": "marker",
        "content": f"{subgoal}. Done.",
        "content_chars": len(subgoal) + 7,
        "similarity": 0.2,
        "threshold": MIN_SIMILARITY,
        "nearest_prototype_id": "case_analysis",
        "fallback_prototype_id": "generic_step",
        "score": 2,
        "status": "ok",
    }


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), "utf-8"
    )
    return path


def _draft(name: str) -> str:
    return json.dumps(
        {
            "name": name,
            "domain": "math",
            "usage_context": "When a step draws the figure the problem is about.",
            "reasoning_pattern": "A careful solver draws every object and labels each part.",
            "levels": {
                "3": "Complete and correct.",
                "2": "Correct with a harmless slip.",
                "1": "A real error in the work.",
                "0": "Wrong or not attempted.",
            },
            "failure_modes": [
                {"id": "unlabelled", "description": "A part is left unlabelled.", "max_score": 1}
            ],
        }
    )


async def _refresh(options: RefreshOptions, judge: FakeJudge) -> BuildResult:
    return await refresh_library(
        options, backend=judge, embedder=FakeEmbedder(), min_similarity=MIN_SIMILARITY
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Misses over a log and one rotated file, with a line cut short by a stop."""
    path = tmp_path / "misses.jsonl"
    _write(tmp_path / "misses.jsonl.1", [_miss(s, n) for n, s in enumerate(SKETCH[:3])])
    return _write(path, [*(_miss(s, n) for n, s in enumerate(SKETCH[3:], 3)), '{"subgoal": "Sk'])


async def test_new_prototypes_are_added_and_the_base_is_untouched(
    log: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lib2"
    judge = FakeJudge(replies=[_draft("Figure sketching")])
    result = await _refresh(RefreshOptions(misses=log, base=PROTOTYPES, out=out), judge)

    base, library = load_library(PROTOTYPES), load_library(out)
    assert result.built == ("figure_sketching",) and result.extended == ()
    assert set(library.prototypes) == {*base.prototypes, "figure_sketching"}
    assert set(library.prototypes["figure_sketching"].exemplars) == set(SKETCH)
    for source in PROTOTYPES.glob("*.toml"):
        assert (out / source.name).read_bytes() == source.read_bytes(), source.name
    for template in (PROTOTYPES / "templates").iterdir():
        assert (out / "templates" / template.name).read_bytes() == template.read_bytes()
    # Members were shown unlabelled: the fallback judge's score is not a person's label.
    [prompt] = judge.prompts
    assert "Sketch the" in prompt[1]["content"] and "people judged" not in prompt[1]["content"]

    report = json.loads((out / REPORT_JSON).read_text(encoding="utf-8"))
    assert report["misses"]["lines"] == 7 and report["misses"]["usable"] == 6
    assert report["misses"]["skipped_examples"] == ["misses.jsonl:4: not JSON"]
    assert report["misses"]["files"] == [str(log.with_name("misses.jsonl.1")), str(log)]
    assert report["coverage"]["before"] == 0.0 and report["coverage"]["after"] == 1.0
    manifest = tomllib.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["built"] == ["figure_sketching"] and manifest["extended"] == []
    assert manifest["base"] == str(PROTOTYPES) and manifest["library_version"] == library.version
    assert "figure_sketching" in (out / REPORT_MD).read_text(encoding="utf-8")


async def test_the_refreshed_library_routes_a_former_miss_to_the_new_prototype(
    log: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lib2"
    await _refresh(
        RefreshOptions(misses=log, base=PROTOTYPES, out=out),
        FakeJudge(replies=[_draft("Figure sketching")]),
    )
    embedder = FakeEmbedder()
    vectors = embedder.encode([SKETCH[0]])
    [before] = PrototypeIndex(load_library(PROTOTYPES), embedder).route(
        vectors, MIN_SIMILARITY, None
    )
    [after] = PrototypeIndex(load_library(out), embedder).route(vectors, MIN_SIMILARITY, None)
    assert before.fallback
    assert not after.fallback and after.prototype.id == "figure_sketching"


async def test_a_cluster_close_to_a_base_prototype_adds_nothing(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "lib2"
    # A merge threshold below the cluster's similarity to its nearest base exemplar.
    result = await _refresh(
        RefreshOptions(misses=log, base=PROTOTYPES, out=out, merge_threshold=0.01),
        FakeJudge(replies=[]),
    )
    assert result.built == () and result.extended == ()
    [close] = result.report["close_to_base"]
    assert (
        close["key"] == "cluster_0" and close["prototype_id"] in load_library(PROTOTYPES).prototypes
    )
    assert "not distilled" in result.report["clusters"][0]["outcome"]
    for source in PROTOTYPES.glob("*.toml"):
        assert (out / source.name).read_bytes() == source.read_bytes()


async def test_misses_the_base_now_routes_are_not_clustered(tmp_path: Path) -> None:
    covered = load_library(PROTOTYPES).prototypes["case_analysis"].exemplars[0]
    log = _write(tmp_path / "m.jsonl", [_miss(covered, 0, "old")])
    with pytest.raises(BuildError, match="already routes all 1"):
        await _refresh(RefreshOptions(misses=log, base=PROTOTYPES, out=tmp_path / "x"), FakeJudge())


def test_rotated_files_are_read_oldest_first(tmp_path: Path) -> None:
    log = tmp_path / "m.jsonl"
    for name in ("m.jsonl.2", "m.jsonl.10", "m.jsonl.1", "m.jsonl.bak"):
        _write(tmp_path / name, [_miss("x", 0)])
    assert [p.name for p in miss_files(log)] == ["m.jsonl.10", "m.jsonl.2", "m.jsonl.1"]
    _write(log, [_miss("y", 1, "v2")])
    assert miss_files(log)[-1] == log
    assert read_misses(log).versions == {"v1": 3, "v2": 1}


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([], id="empty"),
        pytest.param(["not json", '{"subgoal": ""}', "[1, 2]"], id="unusable"),
    ],
)
def test_cli_refuses_a_log_with_no_usable_lines(
    tmp_path: Path, lines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    log = _write(tmp_path / "m.jsonl", lines)
    out = tmp_path / "lib2"
    code = main(
        ["library", "refresh", "--misses", str(log), "--base", str(PROTOTYPES), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no usable miss lines" in " ".join(err.split())
    assert not out.exists()


def test_cli_refuses_a_missing_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "library",
            "refresh",
            "--misses",
            str(tmp_path / "none.jsonl"),
            "--base",
            str(PROTOTYPES),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "no such miss log" in " ".join(capsys.readouterr().err.split())
