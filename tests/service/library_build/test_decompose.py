"""Records → build steps: the service's own segmenter, labels optional, sampling as in eval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scribe_service.library_build.decompose import (
    data_digest,
    decompose,
    read_build_records,
)
from scribe_service.library_build.errors import BuildError
from support import FIXTURES


def _record(rid: str, steps: list[str], labels: dict[str, int] | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": rid,
        "source": "test/math",
        "task": "a task",
        "messages": [{"role": "user", "content": "a task"}]
        + [{"role": "assistant", "content": text} for text in steps],
    }
    if labels is not None:
        record["step_labels"] = labels
    return record


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_steps_keep_their_subgoal_and_human_label(tmp_path: Path) -> None:
    data = _write(
        tmp_path / "d.jsonl",
        [
            _record(
                "r1", ["Step 1: Factor the number.", "Step 2: Add the factors."], {"1": 1, "2": -1}
            ),
            _record("r2", ["Let's compute the sum."], None),  # no labels at all: still usable
        ],
    )
    steps = decompose(read_build_records(data))
    assert [(s.record_id, s.subgoal, s.label) for s in steps] == [
        ("r1", "Factor the number.", 1),
        ("r1", "Add the factors.", -1),
        ("r2", "Let's compute the sum.", None),
    ]


def test_empty_steps_are_left_out(tmp_path: Path) -> None:
    data = _write(tmp_path / "d.jsonl", [_record("r", ["", "Compute the total."], {})])
    assert [s.subgoal for s in decompose(read_build_records(data))] == ["Compute the total."]


def test_limit_and_sample(tmp_path: Path) -> None:
    data = _write(tmp_path / "d.jsonl", [_record(f"r{i}", ["Add."], {}) for i in range(6)])
    assert [r.id for r in read_build_records(data, limit=2)] == ["r0", "r1"]
    sampled = [r.id for r in read_build_records(data, sample=3, seed=1)]
    assert len(sampled) == 3 and sampled == sorted(sampled)  # kept in file order
    assert sampled == [r.id for r in read_build_records(data, sample=3, seed=1)]


def test_fixture_records_decompose() -> None:
    steps = decompose(read_build_records(FIXTURES / "hotpotqa_agent.jsonl"))
    assert steps and all(s.subgoal and s.step.message_index is not None for s in steps)
    assert {s.label for s in steps} <= {1, 0, -1, None}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json\n", "d.jsonl:1: not JSON"),
        ('{"id": "x", "trajectory_available": false}\n', "labels-only"),
        ("\n", "no trajectory records"),
    ],
)
def test_bad_input_is_a_build_error_naming_the_line(tmp_path: Path, text: str, error: str) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(text, encoding="utf-8")
    with pytest.raises(BuildError, match=error):
        read_build_records(data)


def test_digest_is_the_files_sha256(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"abc")
    assert data_digest(data) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
