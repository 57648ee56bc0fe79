"""The reference rows of `scribe eval labels`, on hand-made records: the constant guess an
arm's agreement must beat, and the LLM annotators' rows beside it."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from scribe_client.protocol import ScoreRequest
from scribe_service.evaluation.analysis import (
    MAJORITY,
    Config,
    Unit,
    arm_labels_summary,
    majority_label,
    reference_rows,
)
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


def _line(index: int, judge: float, capped_to: float | None = None) -> dict[str, Any]:
    """A judged step: the judge's reward `judge`, capped by a check to `capped_to`."""
    return {
        "step": index - 1, "message_index": index, "status": "ok", "error": None,
        "prototype_id": "p", "reward": judge if capped_to is None else capped_to,
        "capped_by_check": capped_to is not None, "judge_score": None,
        "judge_expected_score": judge * 3,
    }  # fmt: skip


def test_the_judge_alone_and_the_checks_effect_are_paired_on_the_same_steps() -> None:
    cfg = Config(fit_split="a", n_resamples=200)
    records = [_record("a", [1, 1, -1]), _record("b", [1, -1, -1])] * 3

    def summary(cap: dict[int, float]) -> dict[str, Any]:
        units = []
        for record in records:
            lines = [_line(i, 0.8 if record.step_labels[i] == 1 else 0.4, cap.get(i))
                     for i in (1, 2, 3)]  # fmt: skip
            units.append(Unit(record, lines, 3))
        return arm_labels_summary(units, cfg)

    # The judge alone separates the labels perfectly in every case.
    clean = summary({})
    assert clean["metrics"]["step_auroc"]["value"] == 1.0
    assert clean["judge_alone"]["step_auroc"]["value"] == 1.0
    assert clean["judge_alone"]["checks_effect"]["value"] == 0.0
    # A check that caps a step humans called correct (step 1 of every record) costs AUROC…
    wrong = summary({1: 0.0})
    assert wrong["capped_by_check"] == 6
    assert wrong["judge_alone"]["step_auroc"]["value"] == 1.0
    effect = wrong["judge_alone"]["checks_effect"]
    assert effect["value"] == pytest.approx(wrong["metrics"]["step_auroc"]["value"] - 1.0)
    assert effect["value"] < 0
    assert effect["hi"] < 0  # paired: every resample loses
    # …and one that caps a step humans called wrong, below the judge's own score, costs none.
    right = summary({3: 0.0})
    assert right["judge_alone"]["checks_effect"]["value"] == 0.0
