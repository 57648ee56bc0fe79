"""A trainer's ground truth, in any of its shapes, as the text of a request's `reference`;
and OpenRLHF labels that are not outcomes becoming references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from scribe_client.protocol import MAX_REFERENCE_CHARS, RemoteRMRequest
from scribe_client.reference import reference_text
from scribe_client.remote_rm import samples


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(" Ridley Scott\n", "Ridley Scott", id="string"),
        pytest.param(42, "42", id="int"),
        pytest.param(0.5, "0.5", id="float"),
        pytest.param(True, "true", id="bool"),
        pytest.param(["Danube"], "Danube", id="one-answer"),
        pytest.param(["Danube", "Donau"], '["Danube", "Donau"]', id="several-answers"),
        pytest.param(("a", None, " ", "b"), '["a", "b"]', id="empty-items-dropped"),
        pytest.param({"target": ["Marion, South Australia"]}, "Marion, South Australia",
                     id="search-r1-target"),
        pytest.param({"target": np.array(["x", "y"], dtype=object)}, '["x", "y"]',
                     id="numpy-target"),
        pytest.param(np.int64(7), "7", id="numpy-scalar"),
        pytest.param({"answer": "7", "unit": "m"}, '{"answer": "7", "unit": "m"}', id="mapping"),
        pytest.param(["Zürich"], "Zürich", id="not-ascii-escaped"),
    ],
)  # fmt: skip
def test_ground_truth_shapes(value: Any, text: str) -> None:
    assert reference_text(value) == text


@pytest.mark.parametrize("value", [None, "", "  \n", [], [None, ""], float("nan"), {"target": []}])
def test_no_usable_ground_truth_is_no_reference(value: Any) -> None:
    assert reference_text(value) is None


def test_an_over_long_reference_keeps_head_and_tail_within_the_limit() -> None:
    text = "Working. " + "x" * (2 * MAX_REFERENCE_CHARS) + " The answer is 42."
    shortened = reference_text(text)
    assert shortened is not None and len(shortened) == MAX_REFERENCE_CHARS
    assert shortened.startswith("Working. ") and shortened.endswith("The answer is 42.")
    assert reference_text(text, limit=None) == text


def test_remote_rm_labels_that_are_not_outcomes_are_references() -> None:
    body = RemoteRMRequest(query=["2 + 2 = 4."] * 4, prompts=[""] * 4, labels=["1", "4", [], None])
    sent = [s.request for s in samples(body)]
    assert [(r.outcome, r.reference) for r in sent if r] == [
        (1.0, None), (None, "4"), (None, None), (None, None)
    ]  # fmt: skip
    # Labels that are not outcomes: every label is the answer, numbers included.
    as_answers = [s.request for s in samples(body, labels_are_outcomes=False)]
    assert [r.reference for r in as_answers if r] == ["1", "4", None, None]
    off = samples(body, labels_are_references=False)
    assert all(s.request is not None and s.request.reference is None for s in off)
