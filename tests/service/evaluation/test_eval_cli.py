"""`scribe eval` on the command line: bad arguments and bad records end with exit status 2 and
a message, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scribe_service.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "eval"


def test_unknown_arm_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "labels", str(FIXTURES / "agent.jsonl"), "--out", str(tmp_path),
                 "--arms", "scribe,oracle"])  # fmt: skip
    assert code == 2
    assert "unknown ['oracle']" in capsys.readouterr().out


def test_a_labels_only_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "labels.jsonl"
    data.write_text(json.dumps({"id": "t/1", "trajectory_available": False, "step_labels": {}}))
    code = main(["eval", "consistency", str(data), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no `messages` (a labels-only record)" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_eval_needs_a_sub_command() -> None:
    with pytest.raises(SystemExit):
        main(["eval"])
