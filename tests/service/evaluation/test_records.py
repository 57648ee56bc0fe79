"""The record reader on hand-written fixture records, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scribe_service.evaluation.records import RecordError, read_records, split_of

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "eval"


def test_agent_records_are_read_with_labels_by_message_index() -> None:
    records = read_records(FIXTURES / "agent.jsonl")
    assert [r.id for r in records] == [f"fixture/agent-{i}" for i in range(1, 7)]
    first = records[0]
    assert first.step_labels == {2: 1, 4: 1}
    assert first.final_label == 1
    assert first.llm_labels["blind/model-y"] == {2: 1, 4: None}  # a skipped step stays None
    assert first.request.messages is not None and len(first.request.messages) == 5
    assert first.request.request_id == "fixture/agent-1"
    assert not first.first_error_style


def test_processbench_records_carry_their_first_error() -> None:
    records = {r.id: r for r in read_records(FIXTURES / "processbench.jsonl")}
    assert records["fixture/math-1"].first_error_style
    assert records["fixture/math-1"].first_error is None
    assert records["fixture/math-2"].first_error == 2
    assert records["fixture/math-2"].step_labels == {1: 1, 2: -1}  # nothing after the error


def test_limit_reads_the_first_records() -> None:
    assert [r.id for r in read_records(FIXTURES / "agent.jsonl", limit=2)] == [
        "fixture/agent-1",
        "fixture/agent-2",
    ]


def test_sample_is_seeded_and_keeps_file_order(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    lines = [
        {
            "id": f"r{i}",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "step_labels": {"1": 1},
        }
        for i in range(20)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    first = [r.id for r in read_records(path, sample=5, seed=3)]
    assert first == [r.id for r in read_records(path, sample=5, seed=3)]
    assert len(first) == 5 and first == sorted(first, key=lambda rid: int(rid[1:]))
    assert first != [f"r{i}" for i in range(5)]
    assert first != [r.id for r in read_records(path, sample=5, seed=4)]
    assert len(read_records(path, sample=50)) == 20


def test_split_is_by_task_and_fixed() -> None:
    records = read_records(FIXTURES / "agent.jsonl")
    assert {r.split for r in records} == {"a", "b"}  # the fixtures cover both halves
    assert all(r.split == split_of(r.task) for r in records)
    assert split_of("same task") == split_of("same task")


def _write(tmp_path: Path, record: dict[str, Any]) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path


def _record(**changes: Any) -> dict[str, Any]:
    record = json.loads((FIXTURES / "agent.jsonl").read_text().splitlines()[0])
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"step_labels": {"1": 1}}, "step_labels.1: message 1 is not an assistant message"),
        ({"step_labels": {"2": 2}}, "label must be -1, 0 or 1, got 2"),
        ({"step_labels": {"x": 1}}, "key 'x' is not a message index"),
        ({"final_label": 5}, "final_label: must be -1, 0, 1 or null"),
        ({"llm_labels": {"m": {"step_labels": {"3": 1}}}}, "message 3 is not an assistant"),
        ({"meta": {"first_error_message_index": 1}}, "is not the index of an assistant"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0"),
    ],
)
def test_bad_records_name_line_and_field(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(RecordError, match="records.jsonl:1") as error:
        read_records(_write(tmp_path, _record(**changes)))
    assert message in str(error.value)


def test_labels_only_record_is_refused_with_a_reason(tmp_path: Path) -> None:
    record = {"id": "x", "trajectory_available": False, "step_labels": {"1": 1}}
    with pytest.raises(RecordError, match="no `messages` \\(a labels-only record\\)"):
        read_records(_write(tmp_path, record))


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    line = json.dumps(_record())
    path = tmp_path / "dup.jsonl"
    path.write_text(f"{line}\n{line}\n", encoding="utf-8")
    with pytest.raises(RecordError, match="appears twice"):
        read_records(path)


@pytest.mark.parametrize(
    ("changes", "reference"),
    [
        pytest.param({"reference": "Ridley Scott"}, "Ridley Scott", id="top-level"),
        pytest.param({"reference": ["Ridley Scott"]}, "Ridley Scott", id="one-answer-list"),
        pytest.param(
            {"reference": ["Ridley Scott", "Sir Ridley Scott"]},
            '["Ridley Scott", "Sir Ridley Scott"]',
            id="several-answers",
        ),
        pytest.param(
            {"meta": {"ground_truth": {"target": ["Marion, South Australia"]}}},
            "Marion, South Australia",
            id="agentprocessbench-target",
        ),
        pytest.param({"meta": {"ground_truth": "Danube"}}, "Danube", id="meta-string"),
        pytest.param(
            {"reference": "Tromso", "meta": {"ground_truth": {"target": ["Oslo"]}}},
            "Tromso",
            id="top-level-first",
        ),
        pytest.param({"meta": {"first_error_message_index": None}}, None, id="none"),
    ],
)
def test_a_record_carries_its_reference(
    tmp_path: Path, changes: dict[str, Any], reference: str | None
) -> None:
    [record] = read_records(_write(tmp_path, _record(**changes)))
    assert record.reference == reference
    # The request is what the service would be sent, reference included.
    assert record.request.reference == reference


@pytest.mark.parametrize("given", [42, "", "  ", [], ["ok", 3], {"target": "x"}])
def test_a_malformed_reference_is_refused(tmp_path: Path, given: Any) -> None:
    with pytest.raises(RecordError, match="records.jsonl:1 .*reference: must be"):
        read_records(_write(tmp_path, _record(reference=given)))
