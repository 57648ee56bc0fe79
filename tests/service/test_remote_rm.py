"""OpenRLHF's remote reward-model protocol: query parsing, and /get_reward on the app."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from scribe_client import remote_rm
from scribe_client.protocol import RemoteRMRequest
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
        "scribe_outcome_given": [1.0], "scribe_prompt_found": [1.0], "scribe_refused": [0.0],
    }  # fmt: skip


def test_many_samples_and_the_oldest_request_shape(client: TestClient) -> None:
    answer = client.post("/get_reward", json={"query": [query(), query("4")]}).json()
    assert answer["rewards"] == pytest.approx([1.0, 1.0])
    assert all(len(values) == 2 for values in answer["extra_logs"].values())


def test_nothing_to_score_gets_the_documented_stand_in(client: TestClient) -> None:
    body = {"query": [query(""), query("")], "prompts": [CHATML_PROMPT] * 2, "labels": ["1", "x"]}
    answer = client.post("/get_reward", json=body).json()
    # 0.7 * outcome + 0.3 * SCRIBE_FAILURE_REWARD, else SCRIBE_FAILURE_REWARD: never the bare
    # outcome, which would beat a judged rollout with that outcome.
    assert answer["rewards"] == pytest.approx([0.7, 0.0])
    assert answer["extra_logs"]["scribe_failed"] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("policy", "label", "expected"),
    [("pessimistic", "red", -1.0), ("pessimistic", "1", 0.4), ("exclude", "1", 1.0)],
)
def test_a_failed_judge_is_flagged_beside_the_stand_in(
    settings: Settings, policy: str, label: str, expected: float
) -> None:
    judge = FakeJudge(replies=[JudgeError("down")] * 20)
    update = {"failure_reward": -1.0, "failure_policy": policy, "judge_max_attempts": 1}
    for client in client_for(judge, settings.model_copy(update=update)):
        body = {"query": [query("4.")], "prompts": [CHATML_PROMPT], "labels": [label]}
        answer = client.post("/get_reward", json=body).json()
        assert answer["rewards"] == [pytest.approx(expected)]
        assert answer["extra_logs"]["scribe_failed"] == [1.0]
        assert answer["extra_logs"]["scribe_outcome_given"] == [float(label == "1")]


def test_a_partly_judged_sample_counts_its_failed_step(settings: Settings) -> None:
    judge = FakeJudge(replies=[JudgeError("down")], score=3)  # the first step judged fails
    for client in client_for(judge, settings.model_copy(update={"judge_max_attempts": 1})):
        body = {"query": [query()], "prompts": [CHATML_PROMPT], "labels": ["red"]}
        answer = client.post("/get_reward", json=body).json()
    assert answer["rewards"] == [pytest.approx(0.5)]  # (1.0 + 0) / 2, not 1.0
    assert answer["extra_logs"]["scribe_failed_steps"] == [1.0]
    assert answer["extra_logs"]["scribe_failed"] == [0.0]


def test_a_sample_over_an_input_limit_gets_the_stand_in_alone(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    judge = FakeJudge(score=3)
    limits = {"max_step_input_chars": 200, "max_batch": 4}
    long_answer = "Step 1: " + "carry the one. " * 30
    body = {
        "query": [query(), query(long_answer), query("4")],
        "prompts": [CHATML_PROMPT] * 3,
        "labels": ["1", "1", "x"],
    }
    with caplog.at_level(logging.WARNING, logger="scribe_service.remote_rm"):
        for client in client_for(judge, settings.model_copy(update=limits)):
            answer = client.post("/get_reward", json=body)

    assert answer.status_code == 200
    rewards, logs = answer.json()["rewards"], answer.json()["extra_logs"]
    assert rewards == pytest.approx([1.0, 0.7, 1.0])  # judged, stand-in, judged
    assert logs["scribe_refused"] == [0.0, 1.0, 0.0]
    assert logs["scribe_failed"] == [0.0, 1.0, 0.0]
    assert len(judge.prompts) == 3  # two steps, then one: the refused sample was not judged
    [record] = [r for r in caplog.records if "input limit" in r.getMessage()]
    assert "sample 1" in record.getMessage()
    assert "SCRIBE_MAX_STEP_INPUT_CHARS" in record.getMessage()


def test_too_many_queries_still_refuse_the_whole_request(settings: Settings) -> None:
    for client in client_for(FakeJudge(), settings.model_copy(update={"max_batch": 1})):
        answer = client.post("/get_reward", json={"query": [query(), query()]})
    assert answer.status_code == 422
    assert answer.json()["error"]["param"] == "query"


def test_an_empty_request_gets_empty_lists(client: TestClient) -> None:
    answer = client.post("/get_reward", json={"query": []}).json()
    assert answer["rewards"] == [] and answer["scores"] == []
