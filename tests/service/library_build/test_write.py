"""The written library: prototype TOML that reads back equal, the manifest, the staging rules."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from scribe_service.library import Prototype, load_prototype
from scribe_service.library_build.errors import BuildError
from scribe_service.library_build.write import (
    MANIFEST,
    REPORT_JSON,
    REPORT_MD,
    manifest_toml,
    prototype_toml,
    publish,
    report_markdown,
    stage_library,
    toml_string,
)
from support import PROTOTYPES

SHIPPED = sorted(PROTOTYPES.glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_prototype_reads_back_equal(path: Path, tmp_path: Path) -> None:
    prototype = load_prototype(path)
    written = tmp_path / path.name
    written.write_text(prototype_toml(prototype), encoding="utf-8")
    assert load_prototype(written) == prototype


@pytest.mark.parametrize(
    "text",
    [
        'quotes " and """ and a trailing quote"',
        "back\\slash \\n not a newline",
        "two\nlines with a tab\tand \x01 control",
        'line\n"""\nends with a quote"',
        "unicode: é ≤ 🙂",
    ],
)
def test_strings_survive_toml(text: str) -> None:
    assert tomllib.loads(f"v = {toml_string(text)}")["v"] == text


def test_a_drafted_prototype_with_awkward_text_reads_back_equal(tmp_path: Path) -> None:
    prototype = Prototype.model_validate(
        {
            "id": "awkward",
            "name": 'The "quoted" skill',
            "domain": "general",
            "usage_context": 'When a step quotes C:\\paths or writes """ in prose.',
            "reasoning_pattern": 'A careful agent:\n- escapes \\ properly;\n- ends with a quote"',
            "levels": {str(n): f"Level {n} descriptor text" for n in range(4)},
            "failure_modes": [
                {"id": "bad", "description": 'Something "bad" happens.', "max_score": 0}
            ],
            "exemplars": [f'exemplar {n} with "quotes"' for n in range(5)],
        }
    )
    path = tmp_path / "awkward.toml"
    path.write_text(prototype_toml(prototype), encoding="utf-8")
    assert load_prototype(path) == prototype


def test_the_manifest_names_version_data_parameters_and_judge() -> None:
    text = manifest_toml(
        library_version="abc123",
        data="dev.jsonl",
        data_sha256="f" * 64,
        judge_model="qwen",
        embedding_model="minilm",
        parameters={"threshold": 0.5, "limit": None, "draft_limits": {"name": 60}, "seed": 0},
        built=["figure_sketching"],
        extended=["arithmetic_computation"],
        base="prototypes",
    )
    manifest = tomllib.loads(text)
    assert manifest["library_version"] == "abc123" and manifest["format"] == 1
    assert manifest["data_sha256"] == "f" * 64 and manifest["judge_model"] == "qwen"
    assert manifest["built"] == ["figure_sketching"]
    assert manifest["extended"] == ["arithmetic_computation"]
    # TOML has no null: a parameter left unset is left out.
    assert manifest["parameters"] == {"threshold": 0.5, "draft_limits": {"name": 60}, "seed": 0}


def test_a_build_never_overwrites_a_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(BuildError, match="already exists"):
        stage_library(
            tmp_path / "out", prototypes=[], copied={}, templates=PROTOTYPES / "templates"
        )


def test_the_library_appears_at_out_only_when_published(tmp_path: Path) -> None:
    out = tmp_path / "lib"
    staging = stage_library(
        out,
        prototypes=[load_prototype(PROTOTYPES / "case_analysis.toml")],
        copied={"generic_step.toml": PROTOTYPES / "generic_step.toml"},
        templates=PROTOTYPES / "templates",
    )
    assert not out.exists() and staging.parent == tmp_path
    assert (staging / "generic_step.toml").read_bytes() == (
        PROTOTYPES / "generic_step.toml"
    ).read_bytes()
    report = {
        "data": "d.jsonl",
        "records": 1,
        "steps": 2,
        "subgoals": 2,
        "clusters": [],
        "absorbed": [],
        "dropped": [],
        "built": [],
        "extended": [],
        "failed": [],
        "judge_model": "j",
        "seconds": 1.0,
        "coverage": {"before": 0.5, "before_library": "p", "after": 1.0},
    }
    publish(staging, out, manifest="format = 1\n", report=report)
    assert not staging.exists()
    assert {p.name for p in out.iterdir()} == {
        "templates",
        "generic_step.toml",
        "case_analysis.toml",
        MANIFEST,
        REPORT_JSON,
        REPORT_MD,
    }
    assert "before 50.0%" in (out / REPORT_MD).read_text(encoding="utf-8")


def test_the_report_lists_clusters_absorbed_dropped_and_failed() -> None:
    report = {
        "data": "d.jsonl",
        "records": 3,
        "steps": 12,
        "subgoals": 10,
        "clusters": [
            {
                "key": "cluster_0",
                "subgoals": 6,
                "steps": 7,
                "labels": {"1": 4, "0": 0, "-1": 3, "none": 0},
                "examples": ["Sketch | the triangle"],
                "outcome": "built figure_sketching (1 attempt(s))",
            }
        ],
        "absorbed": [{"subgoals": 1, "into": "cluster_0", "similarity": 0.56, "examples": ["x"]}],
        "dropped": [{"subgoals": 2, "examples": ["Celebrate", "Dance"]}],
        "failed": [{"key": "cluster_1", "attempts": 2, "errors": ["attempt 1: no JSON object"]}],
        "built": ["figure_sketching"],
        "extended": [],
        "judge_model": "j",
        "seconds": 3.0,
        "coverage": {"before": 0.25, "before_library": "prototypes (v1)", "after": 0.75},
    }
    text = report_markdown(report)
    assert "| cluster_0 | 6 | 7 | 4/0/3 | built figure_sketching (1 attempt(s)) |" in text
    assert "Sketch \\| the triangle" in text  # a member cannot break the table
    assert "into cluster_0 (sim 0.56)" in text
    assert "- 2 subgoal(s): Celebrate; Dance" in text
    assert "cluster_1 after 2 attempt(s)" in text and "no JSON object" in text
    assert "before 25.0% (prototypes (v1)), after 75.0%" in text
