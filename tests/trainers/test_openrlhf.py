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

KEYS = {"scribe_failed", "scribe_failed_steps", "scribe_outcome_given", "scribe_prompt_found"}


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
    for row in rows:
        assert row["query"].startswith(row["prompt"]) and "<|im_end|>" in row["query"]
        assert set(row["extra_logs"]) == KEYS
        assert flat(row["extra_logs"]["scribe_prompt_found"]) == 1.0
        assert 0.0 <= flat(row["reward"]) <= 1.0
        assert flat(row["scores"]) == flat(row["reward"])
    # Labels "1" and "0" are outcomes; "red" is a reference answer, not a score.
    given = [flat(r["extra_logs"]["scribe_outcome_given"]) for r in rows]
    assert given == [1.0, 1.0, 0.0]
    assert any(flat(r["extra_logs"]["scribe_failed"]) == 0.0 for r in rows)


def test_a_batch_request_gets_one_reward_per_query(report: dict[str, Any]) -> None:
    [answer] = report["batch"]
    assert len(answer["rewards"]) == len(answer["scores"]) == 3
    assert all(len(values) == 3 for values in answer["extra_logs"].values())
    assert set(answer["extra_logs"]) == KEYS
