from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator, Sequence

import pytest
from asgi_correlation_id import CorrelationIdFilter
from fastapi.testclient import TestClient

from scribe_service.app import create_app
from scribe_service.logs import TextFormatter, logging_config, request_id
from scribe_service.pipeline.embed import Vectors
from scribe_service.settings import Settings
from support import FakeEmbedder, FakeJudge


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The service's own logging configuration, writing JSON lines into a buffer."""
    stream = io.StringIO()
    config = logging_config("info", "json")
    handler = config["handlers"]["default"]
    del handler["class"]
    handler.update({"()": logging.StreamHandler, "stream": stream})
    logging.config.dictConfig(config)
    yield stream
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    for name in ("", "scribe_service", "uvicorn"):
        logging.getLogger(name).handlers.clear()


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_of_a_request_carries_its_id(
    json_logs: io.StringIO, settings: Settings, fake_embedder: FakeEmbedder
) -> None:
    # The judge's first reply is garbage: the retry warning is logged deep inside the pipeline,
    # in a task of its own, and must still carry the request's id.
    judge = FakeJudge(replies=["not a verdict"])
    with TestClient(create_app(settings, embedder=fake_embedder, judge_backend=judge)) as client:
        response = client.post(
            "/v1/score", json={"completion": "2 + 2 = 4"}, headers={"X-Request-ID": "abc-123"}
        )
    assert response.status_code == 200
    mine = [r for r in _records(json_logs) if r["request_id"] == "abc-123"]
    loggers = {r["logger"] for r in mine}
    assert {"scribe_service.pipeline.judge", "scribe_service.access"} <= loggers
    [access] = [r for r in mine if r["logger"] == "scribe_service.access"]
    assert access["method"] == "POST" and access["path"] == "/v1/score"
    assert access["status"] == 200 and isinstance(access["duration_ms"], float)
    assert access["level"] == "info" and str(access["ts"]).endswith("Z")


def test_lines_outside_requests_have_no_id(json_logs: io.StringIO) -> None:
    logging.getLogger("scribe_service.test").warning("startup %s", "done", extra={"port": 1})
    [record] = _records(json_logs)
    assert record["request_id"] == "-" and record["message"] == "startup done"
    assert record["port"] == 1


def test_text_format_is_key_value() -> None:
    record = logging.makeLogRecord(
        {"msg": "request", "levelname": "INFO", "name": "x", "created": 1_700_000_000.25}
    )
    record.msecs = 250.0
    record.status = 200
    line = TextFormatter().format(record)
    assert line == "2023-11-14T22:13:20.250Z INFO x request request_id=- status=200"
    token = request_id.set("req-7")
    try:
        CorrelationIdFilter(default_value="-").filter(record)
    finally:
        request_id.reset(token)
    assert TextFormatter().format(record).endswith("request request_id=req-7 status=200")


def test_an_exception_goes_into_its_own_json_field(json_logs: io.StringIO) -> None:
    try:
        raise RuntimeError("judge exploded")
    except RuntimeError:
        logging.getLogger("scribe_service.test").exception("scoring failed", extra={"step": 3})
    [record] = _records(json_logs)
    assert record["message"] == "scoring failed" and record["step"] == 3
    assert "RuntimeError: judge exploded" in str(record["exception"])
    assert "exc_info" not in record


class LoggingEmbedder(FakeEmbedder):
    """Logs from inside `encode`, which the pipeline runs in a worker thread."""

    def encode(self, texts: Sequence[str]) -> Vectors:
        logging.getLogger("scribe_service.test.embedder").info("encoding %d texts", len(texts))
        return super().encode(texts)


def test_the_id_reaches_worker_threads_and_a_bad_id_is_replaced(
    json_logs: io.StringIO, settings: Settings
) -> None:
    # Both requests must reach the embedder's worker thread: no subgoal-embedding cache.
    settings = settings.model_copy(update={"embedding_cache_entries": 0})
    app = create_app(settings, embedder=LoggingEmbedder(), judge_backend=FakeJudge())
    with TestClient(app) as client:
        kept = client.post(
            "/v1/score", json={"completion": "2 + 2 = 4"}, headers={"X-Request-ID": "t-1"}
        )
        replaced = client.post(
            "/v1/score", json={"completion": "2 + 2 = 4"}, headers={"X-Request-ID": "a b"}
        )
    assert kept.headers["X-Request-ID"] == "t-1"
    new_id = replaced.headers["X-Request-ID"]
    assert new_id != "a b" and len(new_id) == 32
    records = _records(json_logs)
    encoding = [r for r in records if r["logger"] == "scribe_service.test.embedder"]
    # The index's own encode at start-up has no request; each request's encode has its id.
    assert [r["request_id"] for r in encoding][-2:] == ["t-1", new_id]
    assert encoding[0]["request_id"] == "-"
    access = [r for r in records if r["logger"] == "scribe_service.access"]
    assert [(r["request_id"], r["status"]) for r in access] == [("t-1", 200), (new_id, 200)]
