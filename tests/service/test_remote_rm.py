"""OpenRLHF's remote reward-model protocol: query parsing, and /get_reward on the app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from scribe_client.protocol import RemoteRMRequest
from scribe_service import remote_rm
from scribe_service.app import create_app
from scribe_service.pipeline.judge import JudgeError
from scribe_service.settings import Settings
from support import FakeEmbedder, FakeJudge

CHATML_PROMPT = (
    "<|im_start|>system\nYou are helpful.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
)
RESPONSE = "Step 1: Add.\n2 + 2 = 4\nStep 2: Answer.\n4"


@pytest.mark.parametrize(
    ("templated", "plain"),
    [
        (
            CHATML_PROMPT + RESPONSE + "<|im_end|>",
            "You are helpful.\n\nWhat is 2 + 2?\n\n" + RESPONSE,
        ),
        (
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>",
            "Hi\n\nHello!",
        ),
        (
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHey<end_of_turn>",
            "Hi\n\nHey",
        ),
        ("<s>[INST] Hi [/INST] Hey</s>", "[INST] Hi [/INST] Hey"),
    ],
    ids=["chatml", "llama3", "gemma", "llama2"],
)
def test_markup_is_removed(templated: str, plain: str) -> None:
    assert remote_rm.strip_markup(templated) == plain


@pytest.mark.parametrize(
    ("query", "found"),
    [
        (CHATML_PROMPT + RESPONSE + "<|im_end|>", True),
        ("<s>" + CHATML_PROMPT + RESPONSE + "<|im_end|>", True),  # a BOS the prompt lacks
        (CHATML_PROMPT.replace("\n<|im_start|>", "<|im_start|>") + RESPONSE, True),
        ("something else entirely. " + RESPONSE, False),
    ],
    ids=["prefix", "bos", "markup-differs", "absent"],
)
def test_the_response_follows_the_prompt(query: str, found: bool) -> None:
    response, was_found = remote_rm.split_response(query, CHATML_PROMPT)
    assert was_found is found
    if found:
        assert remote_rm.strip_markup(response) == RESPONSE


@pytest.mark.parametrize(
    ("label", "outcome"),
    [("1", 1.0), (" 0.25 ", 0.25), (0, 0.0), (True, 1.0), ("red", None), ("2", None), (None, None)],
)
def test_labels_that_are_outcomes(label: object, outcome: float | None) -> None:
    assert remote_rm.label_outcome(label) == outcome


def test_lists_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="`labels` has 2 entries"):
        RemoteRMRequest(query=["a"], prompts=["p"], labels=["1", "0"])


def client_for(judge: FakeJudge, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    yield from client_for(FakeJudge(score=3), settings)


def query(response: str = RESPONSE) -> str:
    return CHATML_PROMPT + response + "<|im_end|>"


def test_one_sample_as_openrlhf_sends_it(client: TestClient) -> None:
    body = {"query": [query()], "prompts": [CHATML_PROMPT], "labels": ["0"]}
    answer = client.post("/get_reward", json=body).json()

    assert answer["rewards"] == pytest.approx([0.3])  # 0.7 * 0 + 0.3 * 1.0
    assert answer["scores"] == answer["rewards"]
    assert answer["extra_logs"] == {
        "scribe_failed": [0.0], "scribe_failed_steps": [0.0],
        "scribe_outcome_given": [1.0], "scribe_prompt_found": [1.0],
    }  # fmt: skip


def test_many_samples_and_the_oldest_request_shape(client: TestClient) -> None:
    answer = client.post("/get_reward", json={"query": [query(), query("4")]}).json()
    assert answer["rewards"] == pytest.approx([1.0, 1.0])
    assert all(len(values) == 2 for values in answer["extra_logs"].values())


def test_nothing_to_score_gets_the_documented_stand_in(client: TestClient) -> None:
    body = {"query": [query(""), query("")], "prompts": [CHATML_PROMPT] * 2, "labels": ["1", "x"]}
    answer = client.post("/get_reward", json=body).json()
    assert answer["rewards"] == [1.0, 0.0]  # the outcome, else SCRIBE_REMOTE_RM_FAILURE_REWARD
    assert answer["extra_logs"]["scribe_failed"] == [1.0, 1.0]


def test_a_failed_judge_is_flagged_beside_the_stand_in(settings: Settings) -> None:
    judge = FakeJudge(replies=[JudgeError("down")] * 20)
    settings = settings.model_copy(
        update={"remote_rm_failure_reward": -1.0, "judge_max_attempts": 1}
    )
    for client in client_for(judge, settings):
        body = {"query": [query("4.")], "prompts": [CHATML_PROMPT], "labels": ["red"]}
        answer = client.post("/get_reward", json=body).json()
        assert answer["rewards"] == [-1.0]
        assert answer["extra_logs"]["scribe_failed"] == [1.0]
        assert answer["extra_logs"]["scribe_outcome_given"] == [0.0]


def test_an_empty_request_gets_empty_lists(client: TestClient) -> None:
    answer = client.post("/get_reward", json={"query": []}).json()
    assert answer["rewards"] == [] and answer["scores"] == []
