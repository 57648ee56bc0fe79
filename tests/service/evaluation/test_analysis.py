"""The reference rows of `scribe eval labels`, on hand-made records: the constant guess an
arm's agreement must beat, and the LLM annotators' rows beside it."""

from __future__ import annotations

import itertools

import pytest

from scribe_client.protocol import ScoreRequest
from scribe_service.evaluation.analysis import MAJORITY, Config, majority_label, reference_rows
from scribe_service.evaluation.records import Record, Split, split_of

REQUEST = ScoreRequest.model_validate(
    {
        "messages": [
            {"role": "user", "content": "q"},
            *({"role": "assistant", "content": f"step {i}"} for i in range(1, 4)),
        ]
    }
)


def _task(split: Split) -> str:
    return next(t for t in (f"task {i}" for i in itertools.count()) if split_of(t) == split)


def _record(split: Split, labels: list[int], llm: list[int | None] | None = None) -> Record:
    by_index = dict(enumerate(labels, start=1))
    return Record(
        id=split,
        task=_task(split),
        request=REQUEST,
        step_labels=by_index,
        llm_labels={} if llm is None else {"blind/x": dict(enumerate(llm, start=1))},
    )


def test_the_constant_guess_is_the_fit_splits_majority_scored_on_the_other_split() -> None:
    records = [
        _record("a", [1, 1, -1]),  # fit: +1 is the majority
        _record("b", [1, -1, -1], llm=[1, -1, None]),
    ]
    rows = reference_rows(records, Config(fit_split="a", n_resamples=50))
    assert list(rows) == [MAJORITY, "blind/x"]
    assert rows[MAJORITY]["value"] == pytest.approx(1 / 3)
    assert rows[MAJORITY]["n"] == 3
    assert rows["blind/x"]["value"] == pytest.approx(1.0)  # the skipped step is not counted
    assert rows["blind/x"]["n"] == 2


def test_a_tie_goes_to_the_larger_label_and_no_labels_give_no_row() -> None:
    assert majority_label([_record("a", [1, -1, 0])]) == 1
    assert majority_label([_record("a", [-1, 0, 0])]) == 0
    assert majority_label([]) is None
    assert reference_rows([_record("b", [1, 1, 1])], Config(fit_split="a")) == {}
