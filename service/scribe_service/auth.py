"""Bearer-key authentication for every route but `/healthz` and the API's documentation.

A reward server that anyone on the network can call is a server anyone can poison or drain,
so once `SCRIBE_API_KEY` is set, a request without `Authorization: Bearer <key>` gets a 401
in the usual error shape. Liveness stays open so orchestrators can probe without the key, and
so does the documentation (`/docs`, its assets, `/openapi.json`): a browser cannot send a
bearer key to open a page, and the schema of an open-source API holds nothing to protect.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from scribe_service.errors import error_response

OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
OPEN_PREFIXES = ("/static-offline-docs/",)


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, *, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        # Constant-time comparison: the key must not leak through response timing.
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        message = "missing API key" if not given else "wrong API key"
        response = error_response(
            401,
            f"{message}: send `Authorization: Bearer <SCRIBE_API_KEY>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
