from __future__ import annotations

import logging

import numpy as np
import pytest

from scribe_client.protocol import FunctionCall, ToolCall
from scribe_service.app import build_pipeline
from scribe_service.library import Library
from scribe_service.pipeline.retrieve import PrototypeIndex, step_signals
from scribe_service.pipeline.segment import Step
from scribe_service.settings import Settings
from support import FakeEmbedder


def test_each_exemplar_routes_to_its_own_prototype(library: Library) -> None:
    embedder = FakeEmbedder()
    index = PrototypeIndex(library, embedder)
    prototypes = library.routable()
    assert index.size == sum(len(p.exemplars) for p in prototypes)
    exemplars = [(p.id, e) for p in prototypes for e in p.exemplars]
    routes = index.route(embedder.encode([e for _, e in exemplars]), min_similarity=0.5, steps=None)
    hits = sum(route.nearest.id == pid for (pid, _), route in zip(exemplars, routes, strict=True))
    # Identical text is similarity 1 unless two prototypes share a bag of words.
    assert hits >= 0.95 * len(exemplars)
    assert all(route.similarity > 0.99 and not route.fallback for route in routes)


def test_below_threshold_uses_the_fallback_and_reports_the_nearest(library: Library) -> None:
    embedder = FakeEmbedder()
    index = PrototypeIndex(library, embedder)
    [route] = index.route(embedder.encode(["zzzz qqqq xxxx"]), min_similarity=0.9, steps=None)
    assert route.fallback
    assert route.prototype.id == library.fallback.id
    assert route.nearest.id != library.fallback.id
    assert route.similarity < 0.9


def test_empty_input(library: Library) -> None:
    embedder = FakeEmbedder()
    assert PrototypeIndex(library, embedder).route(embedder.encode([]), 0.3, None) == []


def test_a_step_goes_to_the_owner_of_its_single_nearest_exemplar(library: Library) -> None:
    embedder = FakeEmbedder()
    index = PrototypeIndex(library, embedder)
    owners = [p for p in library.routable() for _ in p.exemplars]
    exemplars = embedder.encode([e for p in library.routable() for e in p.exemplars])
    queries = [
        "search the web for the capital of france",
        "check the tool output before answering",
        "compute the sum of both numbers step by step",
        "write the final answer",
    ]
    vectors = embedder.encode(queries)
    routes = index.route(vectors, min_similarity=-1.0, steps=None)
    # Brute force: the exemplar with the highest cosine similarity decides, nothing else.
    similarities = vectors @ exemplars.T
    for route, row in zip(routes, similarities, strict=True):
        best = float(row.max())
        assert route.similarity == pytest.approx(best, abs=1e-4)
        assert route.nearest.id in {owners[i].id for i in np.flatnonzero(row >= best - 1e-6)}


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["SCRIBE_TOP_K", "SCRIBE_REMOTE_RM_FAILURE_REWARD"])
async def test_a_retired_setting_is_reported_not_silently_dropped(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    await build_pipeline(settings, embedder=FakeEmbedder(), with_judge=False)
    assert name not in caplog.text
    monkeypatch.setenv(name, "4")
    with caplog.at_level(logging.WARNING, logger="scribe_service"):
        await build_pipeline(settings, embedder=FakeEmbedder(), with_judge=False)
    [record] = [r for r in caplog.records if name in r.getMessage()]
    assert record.levelno == logging.WARNING and "ignored" in record.getMessage()


def _step(text: str, calls: int = 0) -> Step:
    tool_calls = tuple(
        ToolCall(id=f"c{i}", function=FunctionCall(name="search", arguments="{}"))
        for i in range(calls)
    )
    return Step(index=0, content=text, subgoal=text, subgoal_source="derived",
                tool_calls=tool_calls)  # fmt: skip


def test_step_signals_read_the_step_not_its_subgoal() -> None:
    assert step_signals(_step("The answer is 7.")) == {"final_answer"}
    assert step_signals(_step("So the total is \\boxed{12}.")) == {"final_answer"}
    assert step_signals(_step("3*4 = 7.")) == set()
    assert step_signals(_step("Let me look it up.", calls=1)) == {"tool_call"}


def test_a_prototype_that_requires_a_final_answer_never_gets_a_step_without_one(
    library: Library,
) -> None:
    embedder = FakeEmbedder()
    index = PrototypeIndex(library, embedder)
    gated = next(p for p in library.routable() if "final_answer" in p.requires)
    exemplar = gated.exemplars[0]
    vectors = embedder.encode([exemplar, exemplar, exemplar])
    steps = [_step("7 is what it comes to"), _step("The answer is 7."), _step("x", calls=1)]
    without, answered, calling = index.route(vectors, -1.0, steps)
    assert answered.prototype.id == gated.id and answered.similarity > 0.99
    for route in (without, calling):
        assert route.prototype.id != gated.id and not route.fallback
        assert route.similarity < answered.similarity
    # Bare subgoals (no step to read) keep every prototype eligible.
    [bare] = index.route(vectors[:1], -1.0, None)
    assert bare.prototype.id == gated.id


def test_the_final_answer_rubric_requires_a_final_answer(library: Library) -> None:
    assert library.prototypes["final_answer_statement"].requires == ("final_answer",)
