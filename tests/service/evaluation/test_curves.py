"""`scribe eval curves`: a hand-written score log (and its rotated backups) → numbers checked
by hand, the plots, the counted lines that cannot be plotted, and the command's exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scribe_service.app import create_app
from scribe_service.cli import main
from scribe_service.evaluation.curves import CurvesError, curves, log_files, make_buckets
from scribe_service.settings import Settings
from support import FakeEmbedder, FakeJudge


def _line(step: Any, prototype: str, score: float | None, **extra: Any) -> dict[str, Any]:
    metadata = extra.pop("metadata", {"global_step": step, "run": "a"})
    domain = {"alpha": "math", "beta": "search_qa"}.get(prototype, "tool_use")
    return {
        "time": "2026-12-01T00:00:00.000+00:00", "request_id": "r", "metadata": metadata,
        "library_version": "v1", "judge_model": "judge", "judge_mode": "verdict", "step": 0,
        "message_index": None, "prototype_id": prototype, "domain": domain, "fallback": False,
        "similarity": 0.5, "score": score, "expected_score": None,
        "reward": None if score is None else score / 3,
        "status": "ok" if score is not None else "failed",
        "error": None if score is not None else "judge_timeout", **extra,
    }  # fmt: skip


def _write(path: Path, lines: list[Any]) -> None:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Steps 0 and 10 over three files, oldest in LOG.2, plus lines that cannot be plotted."""
    path = tmp_path / "scores.jsonl"
    _write(tmp_path / "scores.jsonl.2", [_line(0, "alpha", 1), _line(0, "alpha", 2)])
    _write(tmp_path / "scores.jsonl.1", [
        _line(0, "alpha", None), _line(0, "beta", 3), _line(10, "alpha", 3),
        _line(10, "beta", None),
        # logprob mode: the expected score counts, not the argmax digit
        _line(10, "beta", 3, expected_score=2.5),
    ])  # fmt: skip
    _write(path, [
        _line(None, "alpha", 3, metadata={"run": "a"}),  # no step key
        _line(None, "alpha", 3, metadata=None),
        _line(None, "alpha", 3, metadata={"global_step": "soon"}),  # not a number
        _line(None, "alpha", 3, metadata={"global_step": True}),
        '{"time": "2026-12-01T00:00:00',  # cut short by a crash
    ])  # fmt: skip
    (tmp_path / "scores.jsonl.bak").write_text("not a backup\n")
    return path


def test_backups_are_read_oldest_first(log: Path) -> None:
    names = [p.name for p in log_files(log)]
    assert names == ["scores.jsonl.2", "scores.jsonl.1", "scores.jsonl"]


def test_summary_values_by_hand(log: Path, tmp_path: Path) -> None:
    summary = curves(log, tmp_path / "out")

    assert summary["buckets"] == [{"start": 0.0, "end": 0.0, "x": 0.0},
                                  {"start": 10.0, "end": 10.0, "x": 10.0}]  # fmt: skip
    alpha = summary["prototypes"]["alpha"]
    assert alpha["domain"] == "math"
    # Step 0: scores 1 and 2 and one failure: mean 1.5 (1.0 if the failure counted as 0).
    assert alpha["buckets"] == [
        {"n": 2, "mean_score": 1.5, "failed": 1, "failure_rate": pytest.approx(1 / 3)},
        {"n": 1, "mean_score": 3.0, "failed": 0, "failure_rate": 0.0},
    ]
    assert (alpha["n"], alpha["mean_score"], alpha["failed"], alpha["failure_rate"]) == (
        3, 2.0, 1, 0.25,
    )  # fmt: skip
    beta = summary["prototypes"]["beta"]
    assert beta["buckets"] == [
        {"n": 1, "mean_score": 3.0, "failed": 0, "failure_rate": 0.0},
        {"n": 1, "mean_score": 2.5, "failed": 1, "failure_rate": 0.5},
    ]
    assert summary["domains"]["math"] == {k: v for k, v in alpha.items() if k != "domain"}
    assert summary["domains"]["search_qa"]["mean_score"] == 2.75
    overall = summary["overall"]["buckets"]
    assert [(b["n"], b["mean_score"], b["failed"]) for b in overall] == [(3, 2.0, 1), (2, 2.75, 1)]
    assert list(summary["prototypes"]) == ["alpha", "beta"]  # most frequent first
    assert summary["lines"] == {
        "total": 12, "with_step": 7, "judged": 5, "failed": 2, "without_step": 2,
        "non_numeric_step": 2, "unreadable": 1, "filtered_out": 0,
    }  # fmt: skip

    out = tmp_path / "out"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for name in ("curves_overall.png", "curves_domains.png", "curves_prototypes.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    assert not (out / "curves_prototypes_rest.png").exists()  # two prototypes: one plot
    report = (out / "report.md").read_text()
    assert "Not plotted: 2 lines without `global_step` in their metadata." in report
    assert "Not plotted: 2 lines with a `global_step` that is not a number." in report
    assert "Not plotted: 1 lines unreadable" in report
    assert "![curves_prototypes.png](curves_prototypes.png)" in report


def test_equal_width_buckets_when_steps_outnumber_bins(tmp_path: Path) -> None:
    log = tmp_path / "scores.jsonl"
    _write(log, [_line(step, "alpha", 1 if step < 5 else 3) for step in range(10)])
    summary = curves(log, tmp_path / "out", bins=2)
    assert summary["buckets"] == [{"start": 0.0, "end": 4.5, "x": 2.25},
                                  {"start": 4.5, "end": 9.0, "x": 6.75}]  # fmt: skip
    assert [(b["n"], b["mean_score"]) for b in summary["overall"]["buckets"]] == [
        (5, 1.0),
        (5, 3.0),
    ]


def test_make_buckets_refuses_zero_bins() -> None:
    with pytest.raises(CurvesError, match="--bins"):
        make_buckets([1.0], 0)


def test_where_and_step_key(tmp_path: Path) -> None:
    log = tmp_path / "scores.jsonl"
    _write(log, [
        _line(None, "alpha", 1, metadata={"epoch": 1, "run": "a"}),
        _line(None, "alpha", 3, metadata={"epoch": "2", "run": "b"}),  # a numeric string counts
    ])  # fmt: skip
    summary = curves(log, tmp_path / "out", step_key="epoch")
    assert [b["mean_score"] for b in summary["overall"]["buckets"]] == [1.0, 3.0]
    only_b = curves(log, tmp_path / "out-b", step_key="epoch", where={"run": "b"})
    assert only_b["overall"]["mean_score"] == 3.0 and only_b["lines"]["filtered_out"] == 1


def test_many_prototypes_split_into_two_plots(tmp_path: Path) -> None:
    log = tmp_path / "scores.jsonl"
    lines = [_line(step, f"p{i:02d}", 2) for i in range(12) for step in range(i + 1)]
    _write(log, lines)
    summary = curves(log, tmp_path / "out", top=8)
    assert list(summary["prototypes"])[:2] == ["p11", "p10"]
    assert (tmp_path / "out" / "curves_prototypes_rest.png").is_file()


def test_cli_prints_the_table(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", "curves", str(log), "--out", str(tmp_path / "out"), "--bins", "5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "domain math" in printed and "alpha" in printed
    assert (tmp_path / "out" / "report.md").is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no score log there"),
        ("", "the score log is empty"),
        (json.dumps(_line(None, "alpha", 2, metadata={})), "none of its 1 lines carries"),
    ],
    ids=["missing", "empty", "no-step-key"],
)
def test_cli_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    log = tmp_path / "scores.jsonl"
    if content is not None:
        log.write_text(content)
    code = main(["eval", "curves", str(log), "--out", str(tmp_path / "out")])
    assert code == 2
    assert message in " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert not (tmp_path / "out").exists()


def test_cli_bad_where_is_a_usage_error(log: Path, tmp_path: Path) -> None:
    assert main(["eval", "curves", str(log), "--out", str(tmp_path), "--where", "run"]) == 2


def test_curves_of_a_log_the_service_wrote(settings: Settings, tmp_path: Path) -> None:
    settings.score_log = tmp_path / "scores.jsonl"
    settings.score_log_max_mb = 2048 / 2**20  # rotates: the backups are read too
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge(score=2))
    with TestClient(app) as client:
        for step in range(6):
            body = {"completion": "Step 1: Add.\n2 + 2 = 4", "metadata": {"global_step": step}}
            assert client.post("/v1/score", json=body).status_code == 200
    assert (tmp_path / "scores.jsonl.1").is_file()
    summary = curves(settings.score_log, tmp_path / "out")
    assert summary["lines"]["with_step"] == 6
    assert [b["mean_score"] for b in summary["overall"]["buckets"]] == [2.0] * 6


def test_time_as_the_step_axis(tmp_path: Path) -> None:
    log = tmp_path / "scores.jsonl"
    _write(log, [
        _line(None, "alpha", 1, metadata=None, time="2026-12-01T10:00:00.000+00:00"),
        _line(None, "alpha", 3, metadata=None, time="2026-12-01T10:30:00.000+00:00"),
        _line(None, "alpha", 2, metadata=None, time="2026-12-01T10:30:00"),  # no zone: unusable
    ])  # fmt: skip
    summary = curves(log, tmp_path / "out", step_key="@time")
    assert [b["x"] for b in summary["buckets"]] == [0.0, 30.0]  # minutes since the first line
    assert [b["mean_score"] for b in summary["overall"]["buckets"]] == [1.0, 3.0]
    assert summary["lines"]["non_numeric_step"] == 1
    assert summary["x_label"] == "minutes since the first line"
