from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scribe_service.cli import main, read_requests, request_from_record
from support import PROTOTYPES


def test_prototypes_lists_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prototypes"]) == 0
    out = capsys.readouterr().out
    assert "generic_step" in out and "search_query_formulation" in out


def test_score_reads_requests_and_dataset_records(
    tmp_path: Path, hotpot_records: list[dict[str, Any]]
) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        {"completion": "Let's add.", "request_id": "mine"},
        hotpot_records[0],
        {"steps": [{"content": "x"}]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    requests = list(read_requests(path, limit=None))
    assert [r.request_id for r in requests] == ["mine", hotpot_records[0]["id"], "line-3"]
    assert requests[1].messages is not None and requests[1].tools is not None
    assert len(list(read_requests(path, limit=2))) == 2


def test_unusable_record_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="line 4"):
        request_from_record({"text": "?"}, 4)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"completion": ""}\n')
    assert main(["score", str(path), "--url", "http://127.0.0.1:9"]) == 2
    assert "error" in capsys.readouterr().out


def test_prototypes_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCRIBE_PROTOTYPES_DIR", str(tmp_path / "missing"))
    assert main(["prototypes"]) == 2
    assert "not found" in capsys.readouterr().out
    monkeypatch.setenv("SCRIBE_PROTOTYPES_DIR", str(PROTOTYPES))
    assert main(["prototypes"]) == 0
