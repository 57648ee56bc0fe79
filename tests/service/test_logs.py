from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from scribe_service.app import create_app
from scribe_service.logs import logging_config
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
    from scribe_service.logs import RequestIdFilter, TextFormatter

    record = logging.makeLogRecord({"msg": "request", "levelname": "INFO", "name": "x"})
    record.status = 200
    RequestIdFilter().filter(record)
    line = TextFormatter().format(record)
    assert line.endswith("INFO x request request_id=- status=200")
