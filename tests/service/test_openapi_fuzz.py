"""Fuzzing from the service's own OpenAPI schema (schemathesis): valid and invalid requests to
every operation, checked for no 5xx, documented status codes, and responses that match their
schemas. Generation is derandomised so CI sees the same cases each run.

The one check left out is "schema-valid data is accepted": some rules (exactly one of
messages / completion / steps; input limits) live in validators the JSON schema cannot
state, so a schema-valid request may rightly get a 422 naming the field.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from scribe_service.app import create_app
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, FakeJudge

EXAMPLES_PER_OPERATION = 120
MIN_CASES = 1000

# Small limits, so generated bodies also reach the limit checks (413 / 422).
app = create_app(
    Settings(
        prototypes_dir=PROTOTYPES,
        cache_dir=Path("/nonexistent"),  # never used: the judge is injected
        max_body_bytes=64 * 1024,
        max_steps=16,
        max_batch=4,
    ),
    embedder=FakeEmbedder(),
    judge_backend=FakeJudge(),
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
cases: Counter[str] = Counter()


# Hypothesis describes strategies by parsing their lambdas' source. For schemas this size
# that can happen deep in the stack, where CPython 3.11's parser runs out of recursion and
# reports "SystemError: AST constructor recursion depth mismatch"; its fallback is a warning
# about the oversized description. Neither is about the service.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


@pytest.fixture(scope="module")
def client() -> Any:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))
    with TestClient(app) as client:  # runs the lifespan: the pipeline is loaded once
        yield client
    sys.setrecursionlimit(limit)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, client: TestClient) -> None:
    cases[case.operation.label] += 1
    kwargs = case.as_transport_kwargs()
    if not kwargs.get("cookies"):
        kwargs.pop("cookies", None)
    if isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")
    response = client.request(**kwargs)
    assert response.status_code < 500, response.text
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


def test_enough_cases_ran(request: pytest.FixtureRequest) -> None:
    operations = [
        item
        for item in request.session.items
        if item.originalname == "test_no_server_errors"  # type: ignore[attr-defined]
    ]
    if len(cases) < len(operations):
        pytest.skip("only part of the fuzz run was selected")
    print(f"{sum(cases.values())} cases: {dict(cases)}")
    assert sum(cases.values()) >= MIN_CASES
