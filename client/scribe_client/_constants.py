"""Defaults for the clients, in one place so the docs and the code cannot disagree."""

from __future__ import annotations

import httpx

__version__ = "0.1.0"

USER_AGENT = f"scribe-client/{__version__}"

DEFAULT_BASE_URL = "http://127.0.0.1:8000"

# Judging a long trajectory takes an LLM call per step, so a response can take minutes;
# a server that does not accept the connection within seconds is down, not busy.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)

DEFAULT_MAX_RETRIES = 2

# Exponential backoff with full jitter: attempt n sleeps uniform(0, min(MAX, INITIAL * 2**n)).
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
# A server asking for a longer pause than this is better reported than waited on.
MAX_RETRY_AFTER_DELAY = 60.0

# Statuses that mean "try again later": overloaded, or a proxy in front of a restarting server.
RETRY_STATUS_CODES = frozenset({429, 502, 503, 504})

ENV_BASE_URL = "SCRIBE_URL"
ENV_API_KEY = "SCRIBE_API_KEY"

REQUEST_ID_HEADER = "X-Request-ID"
