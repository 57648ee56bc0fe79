"""The OpenRLHF reward file, called as OpenRLHF calls it (positional lists, in a thread),
against the service's /get_reward over HTTP (fake embedder and judge)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch

import scribe_adapters.openrlhf
from support import FakeJudge

PROMPT = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
QUERY = PROMPT + "2 + 2 = 4.<|im_end|>"


def load_like_openrlhf() -> ModuleType:
    # OpenRLHF loads `--remote_rm_url file.py` by path, not by package import.
    path = Path(scribe_adapters.openrlhf.__file__)
    spec = importlib.util.spec_from_file_location("reward_func", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rewards_from_the_service(monkeypatch: pytest.MonkeyPatch, service_url: str) -> None:
    monkeypatch.setenv("SCRIBE_URL", service_url)
    answer = load_like_openrlhf().reward_func([QUERY, QUERY], [PROMPT, PROMPT], ["0", "x"])

    assert torch.allclose(answer["rewards"], torch.tensor([0.3, 1.0]))
    assert torch.equal(answer["scores"], answer["rewards"])
    assert answer["extra_logs"]["scribe_failed"].tolist() == [0.0, 0.0]
    assert answer["extra_logs"]["scribe_outcome_given"].tolist() == [1.0, 0.0]


def test_an_unreachable_service_is_flagged_beside_the_stand_in(
    monkeypatch: pytest.MonkeyPatch, closed_url: str
) -> None:
    monkeypatch.setenv("SCRIBE_URL", closed_url)
    monkeypatch.setenv("SCRIBE_FAILURE_REWARD", "-1")
    queries, prompts = [QUERY, QUERY, QUERY], [PROMPT, PROMPT, PROMPT]
    answer = load_like_openrlhf().reward_func(queries, prompts, ["1", "red", True])

    # 0.7 * outcome + 0.3 * failure_reward with an outcome, else the failure reward: the
    # same translation, and the same labels read as outcomes, as the service's /get_reward.
    assert torch.allclose(answer["rewards"], torch.tensor([0.4, -1.0, 0.4]))
    assert answer["extra_logs"]["scribe_failed"].tolist() == [1.0, 1.0, 1.0]
    assert answer["extra_logs"]["scribe_outcome_given"].tolist() == [1.0, 0.0, 1.0]
    assert set(answer["extra_logs"]) == {
        "scribe_failed", "scribe_failed_steps", "scribe_outcome_given", "scribe_prompt_found",
        "scribe_refused",
    }  # fmt: skip


def test_the_old_rule_is_an_explicit_opt_in(
    monkeypatch: pytest.MonkeyPatch, closed_url: str
) -> None:
    monkeypatch.setenv("SCRIBE_URL", closed_url)
    monkeypatch.setenv("SCRIBE_FAILURE_POLICY", "exclude")
    answer = load_like_openrlhf().reward_func([QUERY], [PROMPT], ["1"])
    assert answer["rewards"].tolist() == [1.0]


def test_a_failure_reward_that_pays_is_refused(
    monkeypatch: pytest.MonkeyPatch, closed_url: str
) -> None:
    monkeypatch.setenv("SCRIBE_URL", closed_url)
    monkeypatch.setenv("SCRIBE_FAILURE_REWARD", "1")
    with pytest.raises(ValueError, match="failure_reward"):
        load_like_openrlhf().reward_func([QUERY], [PROMPT], ["1"])


def test_a_failed_judge_through_the_service(
    monkeypatch: pytest.MonkeyPatch, down_service_url: str
) -> None:
    monkeypatch.setenv("SCRIBE_URL", down_service_url)
    answer = load_like_openrlhf().reward_func([QUERY, QUERY], [PROMPT, PROMPT], ["1", "red"])
    assert torch.allclose(answer["rewards"], torch.tensor([0.7, 0.0]))
    assert answer["extra_logs"]["scribe_failed"].tolist() == [1.0, 1.0]


SHOWN = re.compile(r"## Reference answer \(known to be correct\)\n(`{3,})text\n(.*?)\n\1\n", re.S)


def test_a_label_that_is_not_an_outcome_is_the_reference(
    monkeypatch: pytest.MonkeyPatch, service_url: str, judge: FakeJudge
) -> None:
    monkeypatch.setenv("SCRIBE_URL", service_url)
    before = len(judge.prompts)
    labels = ["0", "4", ["4", "four"]]  # an outcome; an answer; several acceptable answers
    answer = load_like_openrlhf().reward_func([QUERY] * 3, [PROMPT] * 3, labels)

    assert answer["extra_logs"]["scribe_outcome_given"].tolist() == [1.0, 0.0, 0.0]
    matches = (SHOWN.search(m[1]["content"]) for m in judge.prompts[before:])
    seen = [None if match is None else match.group(2) for match in matches]
    assert sorted(seen, key=str) == ["4", None, '["4", "four"]']
