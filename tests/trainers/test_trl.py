"""A real `trl.GRPOTrainer` trains with scribe-reward as its reward function, over HTTP."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.trainer


def nanmean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def logged_means(rows: list[dict[str, Any]], name: str) -> list[float | None]:
    means = []
    for row in rows:
        if f"rewards/{name}/std" in row:  # one row per optimisation step
            mean = row.get(f"rewards/{name}/mean")
            means.append(None if mean is None or math.isnan(mean) else mean)
    return means


def test_grpo_trainer_logs_the_rewards_the_service_returned(
    trl_python: Path,
    smollm2_tokenizer: Path,
    scribe_url: str,
    run_trainer_script: Any,
    tmp_path: Path,
) -> None:
    out = tmp_path / "report.json"
    run_trainer_script(
        trl_python, "trl_grpo.py", scribe_url, str(smollm2_tokenizer), str(out), str(tmp_path)
    )
    report = json.loads(out.read_text())

    for run in ("text", "chat"):
        answered = report[run]["answered"]
        # Two optimisation steps, each scoring one prompt's group of 2 in a single batch call.
        assert [len(batch) for batch in answered] == [2, 2], run
        # The trainer-facing reward is a number even where the small judge failed a step.
        assert all(r is not None for batch in answered for r in batch), run
        means = logged_means(report[run]["logged"], report[run]["name"])
        assert means == pytest.approx([nanmean(batch) for batch in answered]), run
        assert all("scribe/failed" in row for row in report[run]["logged"][:2]), run
