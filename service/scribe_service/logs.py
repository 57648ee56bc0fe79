"""Log lines a machine can read. Every record carries the id of the HTTP request it happened
in (`X-Request-ID`, which the trainer-side client also reports), so a failed reward in a
training log leads straight to the service's account of it.

Two formats (SCRIBE_LOG_FORMAT): `text`, one `key=value` line for people, and `json`, one
object per line for log collectors. Fields passed with `extra=` become keys of their own.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

request_id: ContextVar[str] = ContextVar("request_id", default="-")
"""The current request's id; set by `RequestIdMiddleware`, inherited by tasks and threads."""

_PLAIN_RECORD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _PLAIN_RECORD}


class _UTCFormatter(logging.Formatter):
    converter = staticmethod(time.gmtime)

    def timestamp(self, record: logging.LogRecord) -> str:
        return f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}Z"


class TextFormatter(_UTCFormatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {"request_id": getattr(record, "request_id", "-"), **_extras(record)}
        line = " ".join(
            [
                self.timestamp(record),
                record.levelname,
                record.name,
                record.getMessage(),
                *(f"{k}={v}" for k, v in fields.items()),
            ]
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(_UTCFormatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            **_extras(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def logging_config(level: str, format: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the service and uvicorn (`uvicorn.run(log_config=)`).

    uvicorn's access log is off: `RequestIdMiddleware` writes one richer line per request.
    """
    formatter = JSONFormatter if format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": {"()": formatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        # Libraries (httpx logs every judge call at INFO) speak only when something is wrong.
        "root": {"handlers": ["default"], "level": "WARNING"},
        "loggers": {
            "scribe_service": {"level": level.upper()},
            "uvicorn": {"level": level.upper()},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
