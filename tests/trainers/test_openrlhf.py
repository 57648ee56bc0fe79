"""OpenRLHF's own reward client (`SingleTurnAgentExecutor`) against the live /get_reward, in
URL mode and reward-file mode. OpenRLHF's training loop needs Ray, vLLM and DeepSpeed on a GPU,
so the rollout's generation is a stand-in; everything from the decoded query on is real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import scribe_adapters.openrlhf

pytestmark = pytest.mark.trainer

KEYS = {
    "scribe_failed", "scribe_failed_steps", "scribe_outcome_given", "scribe_prompt_found",
    "scribe_refused",
}  # fmt: skip
# The script's labels: "1" and "0" are outcomes, "red" is a reference answer.
OUTCOMES = [1.0, 0.0, None]


@pytest.fixture(scope="module")
def report(
    openrlhf_python: Path,
    smollm2_tokenizer: Path,
    scribe_url: str,
    run_trainer_script: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("openrlhf") / "report.json"
    run_trainer_script(
        openrlhf_python,
        "openrlhf_remote_rm.py",
        scribe_url,
        str(smollm2_tokenizer),
        scribe_adapters.openrlhf.__file__,
        str(out),
        env={"SCRIBE_URL": scribe_url},
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def flat(value: Any) -> float:
    while isinstance(value, list):
        [value] = value
    return float(value)


@pytest.mark.parametrize("mode", ["http", "file"])
def test_each_rollout_gets_a_reward_from_the_service(report: dict[str, Any], mode: str) -> None:
    rows = report[mode]
    judged = 0
    for row, outcome in zip(rows, OUTCOMES, strict=True):
        assert row["query"].startswith(row["prompt"]) and "<|im_end|>" in row["query"]
        assert set(row["extra_logs"]) == KEYS
        assert flat(row["extra_logs"]["scribe_prompt_found"]) == 1.0
        assert flat(row["extra_logs"]["scribe_outcome_given"]) == float(outcome is not None)
        assert flat(row["extra_logs"]["scribe_refused"]) == 0.0
        reward = flat(row["reward"])
        assert flat(row["scores"]) == reward
        if flat(row["extra_logs"]["scribe_failed"]):
            # No step judged (the small judge can fail): exactly the pessimistic stand-in,
            # 0.7 * outcome + 0.3 * SCRIBE_FAILURE_REWARD (0), or 0 without an outcome.
            assert reward == pytest.approx(0.7 * (outcome or 0.0))
        else:
            judged += 1
            # A judged reward: 0.7 * outcome + 0.3 * process, or the process alone.
            low = 0.0 if outcome is None else 0.7 * outcome
            assert low - 1e-6 <= reward <= low + (1.0 if outcome is None else 0.3) + 1e-6
    # A run where every sample got the stand-in proves nothing about the service.
    assert judged >= 1


def test_a_batch_request_gets_one_reward_per_query(report: dict[str, Any]) -> None:
    [answer] = report["batch"]
    assert len(answer["rewards"]) == len(answer["scores"]) == 3
    assert all(len(values) == 3 for values in answer["extra_logs"].values())
    assert set(answer["extra_logs"]) == KEYS
