"""Log lines a machine can read. Every record carries the id of the HTTP request it happened
in (`X-Request-ID`, which the trainer-side client also reports), so a failed reward in a
training log leads straight to the service's account of it.

Two formats (SCRIBE_LOG_FORMAT): `text`, one `key=value` line for people, and `json`, one
object per line for log collectors (python-json-logger). Fields passed with `extra=` become
keys of their own. The id comes from asgi-correlation-id's context variable, which asyncio
copies into every task and `asyncio.to_thread` call started while a request runs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from asgi_correlation_id import CorrelationIdFilter, correlation_id
from pythonjsonlogger.core import RESERVED_ATTRS, merge_record_extra
from pythonjsonlogger.json import JsonFormatter

request_id = correlation_id
"""The current request's id (None outside a request); set by `CorrelationIdMiddleware`."""

NO_REQUEST = "-"
"""The `request_id` of lines written outside any request (start-up, shutdown)."""

_FILTER_FIELD = "correlation_id"  # where CorrelationIdFilter puts the id on a record
_NOT_EXTRA = {*RESERVED_ATTRS, "taskName", _FILTER_FIELD}


class _UTCTimes(logging.Formatter):
    # ISO 8601 in UTC with milliseconds, e.g. 2026-05-01T12:00:00.123Z.
    converter = staticmethod(time.gmtime)
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"


class TextFormatter(_UTCTimes):
    """`<ts> <LEVEL> <logger> <message> request_id=<id> key=value…`."""

    def __init__(self) -> None:
        super().__init__(
            f"%(asctime)s %(levelname)s %(name)s %(message)s request_id=%({_FILTER_FIELD})s",
            defaults={_FILTER_FIELD: NO_REQUEST},
        )

    def formatMessage(self, record: logging.LogRecord) -> str:
        extras = merge_record_extra(record, {}, reserved=_NOT_EXTRA)
        return " ".join([super().formatMessage(record), *(f"{k}={v}" for k, v in extras.items())])


class JSONFormatter(_UTCTimes, JsonFormatter):
    """`{"ts", "level", "logger", "message", "request_id", …extras, "exception"?}`."""

    def __init__(self) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "message", _FILTER_FIELD],
            rename_fields={
                "asctime": "ts",
                "levelname": "level",
                "name": "logger",
                _FILTER_FIELD: "request_id",
                "exc_info": "exception",
            },
            reserved_attrs=sorted(_NOT_EXTRA),
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        log_data["level"] = log_data["level"].lower()
        if log_data["request_id"] is None:
            log_data["request_id"] = NO_REQUEST
        return log_data


def logging_config(level: str, format: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the service and uvicorn (`uvicorn.run(log_config=)`).

    uvicorn's access log is off: `AccessLogMiddleware` writes one richer line per request.
    """
    formatter = JSONFormatter if format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": CorrelationIdFilter, "default_value": NO_REQUEST},
        },
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
