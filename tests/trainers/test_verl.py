"""verl's real reward path (`RewardLoopWorker`, the naive reward manager, `assemble_rm_scores`)
loads `scribe_adapters.verl` by its config keys and scores through the live service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.trainer

KEYS = {
    "score", "scribe_status", "scribe_reward", "scribe_process_reward", "scribe_outcome",
    "scribe_steps", "scribe_failed_steps",
}  # fmt: skip
# verl's gsm8k rule scorer, used as the outcome: only the first response is right.
OUTCOMES = [1.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def report(
    verl_python: Path,
    smollm2_tokenizer: Path,
    scribe_url: str,
    run_trainer_script: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("verl") / "report.json"
    down = "http://127.0.0.1:9"  # discard port: nothing answers
    run_trainer_script(
        verl_python, "verl_reward_loop.py", scribe_url, down, str(smollm2_tokenizer), str(out)
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def check_placement(run: dict[str, Any]) -> None:
    # verl writes each score on the last valid response token and nothing elsewhere.
    for out, row, last in zip(run["outs"], run["rm_scores"], run["last_valid"], strict=True):
        assert row[last] == pytest.approx(out["reward_score"])
        assert all(v == 0 for i, v in enumerate(row) if i != last)


@pytest.mark.parametrize("form", ["async", "sync"])
def test_scores_mix_the_outcome_and_come_with_the_same_keys(
    report: dict[str, Any], form: str
) -> None:
    run = report[form]
    assert len(run["outs"]) == 3
    for out, outcome in zip(run["outs"], OUTCOMES, strict=True):
        info = out["reward_extra_info"]
        assert set(info) == KEYS
        assert info["scribe_outcome"] == outcome
        status = info["scribe_status"]
        assert status in ("ok", "partial", "failed")
        if status == "failed":  # the small judge may fail steps: the failure policy applies
            assert info["scribe_reward"] is None
            assert out["reward_score"] == pytest.approx(0.7 * outcome)  # + 0.3 * 0, not outcome
            continue
        mixed = 0.7 * outcome + 0.3 * info["scribe_process_reward"]
        assert info["scribe_reward"] == pytest.approx(mixed)
        assert info["scribe_steps"] >= 1
        if status == "ok":
            assert out["reward_score"] == pytest.approx(info["scribe_reward"])
        else:  # partial: the failed steps count as 0, so never above the honest reward
            assert 0.7 * outcome - 1e-6 <= out["reward_score"] <= info["scribe_reward"] + 1e-6
    assert any(o["reward_extra_info"]["scribe_status"] != "failed" for o in run["outs"])
    check_placement(run)


def test_an_unreachable_service_gets_the_stand_in_visibly(report: dict[str, Any]) -> None:
    run = report["down"]
    for out, outcome in zip(run["outs"], OUTCOMES, strict=True):
        info = out["reward_extra_info"]
        assert set(info) == KEYS
        assert info["scribe_status"] == "unavailable" and info["scribe_reward"] is None
        # The pessimistic stand-in: 0.7 * outcome + 0.3 * failure_reward (0), never the bare
        # outcome, which would beat every judged response with that outcome.
        assert out["reward_score"] == pytest.approx(0.7 * outcome)
    check_placement(run)
