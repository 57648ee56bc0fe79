"""The service on Ray Serve:
`serve run scribe_service.ray_serve:build_app judge_url=… num_replicas=4`, or
`serve deploy deploy/serve.yaml` (docs/ray-serve.md).

Each replica runs the unchanged app of `scribe_service.app.create_app`, lifespan included: its
own settings (the `SCRIBE_*` environment), library, embedder and judge pool. The service keeps
no state between requests, so replicas need no affinity and any of them may answer.

Serve's defaults suit a model that computes on the replica; this service mostly waits on its
judge, so `serve_options` sets every one that matters, each with its reason. The replica's
health check stays Serve's own liveness ping: a judge outage is answered by the app itself
(503 with Retry-After), never by restarting replicas that would come back to the same outage.

Nothing else in the package imports this module, and ray is imported inside `build_app` only:
`import scribe_service` (and the client) never pull in Ray.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scribe_service.request_ids import HEADER
from scribe_service.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

REPLICA_HEADER = "x-scribe-replica"
REPLICA_LABEL = "replica"
_REQUEST_ID = HEADER.lower().encode()
DEPLOYMENT = "scribe"

# Serve's own drain must outlast the service's: a replica being replaced (redeploy, scale
# down) keeps answering its requests in flight for SCRIBE_SHUTDOWN_GRACE, as `scribe serve` does
# on SIGTERM, and only then is it killed.
SHUTDOWN_MARGIN_S = 15.0


class ServeArgsError(ValueError):
    """A `build_app` argument is unknown or has a value it cannot take; names the argument."""


@dataclass(frozen=True)
class ServeOptions:
    """What `build_app` reads from its arguments: Serve's settings, and the service settings
    the arguments name (each sent to the replicas as its `SCRIBE_*` variable)."""

    num_replicas: int = 2
    min_replicas: int | None = None
    max_replicas: int | None = None
    max_ongoing_requests: int = 0
    target_ongoing_requests: float = 0.0
    num_cpus: float = 1.0
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 0.0
    environment: dict[str, str] = field(default_factory=dict)


_INTS = ("num_replicas", "min_replicas", "max_replicas", "max_ongoing_requests")
_FLOATS = (
    "target_ongoing_requests",
    "num_cpus",
    "health_check_period_s",
    "health_check_timeout_s",
    "graceful_shutdown_timeout_s",
)


def _number(key: str, value: str, kind: type[int] | type[float]) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        raise ServeArgsError(f"{key}={value!r} is not a number") from None
    if number < 0 or (number == 0 and key not in ("num_cpus", "min_replicas")):
        raise ServeArgsError(f"{key}={value!r} must be positive")
    return number


def _int_setting(key: str, args: Mapping[str, str], environ: Mapping[str, str]) -> int:
    """An integer service setting as the replicas will see it: the argument, else the
    environment, else its default."""
    raw = args.get(key, environ.get(f"SCRIBE_{key.upper()}"))
    if raw is None:
        return int(Settings.model_fields[key].default)
    return int(_number(key, raw, int))


def serve_options(args: Mapping[str, object], environ: Mapping[str, str]) -> ServeOptions:
    """`build_app`'s arguments, checked: Serve's own names, or the name of a service setting
    (`judge_url` → `SCRIBE_JUDGE_URL`); anything else is a typo and refused."""
    serve: dict[str, Any] = {}
    environment: dict[str, str] = {}
    # A Serve config's YAML may give numbers as numbers: every argument is read as text.
    text = {key: str(value) for key, value in args.items()}
    for key, value in text.items():
        if key in _INTS:
            serve[key] = int(_number(key, value, int))
        elif key in _FLOATS:
            serve[key] = float(_number(key, value, float))
        elif key in Settings.model_fields:
            environment[f"SCRIBE_{key.upper()}"] = value
        else:
            known = sorted((*_INTS, *_FLOATS))
            raise ServeArgsError(
                f"unknown argument {key!r}: neither a Serve option ({', '.join(known)}) nor a "
                "service setting (scribe_service.settings.Settings)"
            )
    if ("min_replicas" in serve) != ("max_replicas" in serve):
        raise ServeArgsError("autoscaling needs both min_replicas and max_replicas")
    if "max_replicas" in serve and serve["max_replicas"] < max(1, serve["min_replicas"]):
        raise ServeArgsError("max_replicas must be at least min_replicas and at least 1")
    # The app's own admission bound (SCRIBE_MAX_PENDING) must be the one that refuses: it
    # answers 429 with Retry-After, where Serve's queue limit answers a 503 no client can
    # tell from "deployment down" (ray#65193). Serve's default of 5 would throttle a replica
    # that spends its time waiting on the judge.
    serve.setdefault("max_ongoing_requests", _int_setting("max_pending", text, environ))
    # Scale on requests waiting on the judge: a replica keeps about SCRIBE_JUDGE_CONCURRENCY
    # calls in flight, so that many requests in flight is a replica at work, not overloaded.
    serve.setdefault(
        "target_ongoing_requests", float(_int_setting("judge_concurrency", text, environ))
    )
    serve.setdefault(
        "graceful_shutdown_timeout_s",
        _int_setting("shutdown_grace", text, environ) + SHUTDOWN_MARGIN_S,
    )
    return ServeOptions(**serve, environment=environment)


def deployment_options(options: ServeOptions) -> dict[str, Any]:
    """The keyword arguments of `serve.deployment` for `options`."""
    scaling: dict[str, Any]
    if options.max_replicas is not None:
        scaling = {
            "autoscaling_config": {
                "min_replicas": options.min_replicas,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.target_ongoing_requests,
            }
        }
    else:
        scaling = {"num_replicas": options.num_replicas}
    return {
        "name": DEPLOYMENT,
        **scaling,
        "max_ongoing_requests": options.max_ongoing_requests,
        # A replica computes only the embedding of its subgoals (MiniLM on CPU) and waits on
        # the judge the rest of the time: one core each by default.
        "ray_actor_options": {
            "num_cpus": options.num_cpus,
            "runtime_env": {"env_vars": options.environment},
        },
        "graceful_shutdown_timeout_s": options.graceful_shutdown_timeout_s,
        # Liveness only (no `check_health` method): the replica's actor answers. Three missed
        # checks restart it, so a check that asked the judge would restart every replica in a
        # loop during a judge outage; the timeout leaves room for a replica busy embedding.
        "health_check_period_s": options.health_check_period_s,
        "health_check_timeout_s": options.health_check_timeout_s,
    }


def label_samples(exposition: str, label: str, value: str) -> str:
    """Prometheus text exposition with `label="value"` added to every sample: a scrape through
    Serve's proxy reaches one replica, and must say which."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    pair = f'{label}="{escaped}"'
    lines = []
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            lines.append(line)
            continue
        # A metric name holds neither "{" nor a space: the first of them ends it.
        brace, space = line.find("{"), line.find(" ")
        if brace != -1 and brace < space:
            rest = line[brace + 1 :]
            lines.append(f"{line[: brace + 1]}{pair}{'' if rest.startswith('}') else ','}{rest}")
        else:
            lines.append(f"{line[:space]}{{{pair}}}{line[space:]}")
    return "\n".join(lines) + "\n"


class ReplicaIdentity:
    """Names the replica that answered: the `x-scribe-replica` header on every response, and
    the `replica` label on every sample of `/metrics`.

    Serve's proxy gives every request an `x-request-id` (the client's, else a fresh one) and
    adds it to the response itself; the app echoes the same id, so its copy is dropped here
    (one header, one value). An id the app refuses (`request_ids.acceptable_request_id`)
    leaves both: the proxy's, and the app's fresh one that its logs use."""

    def __init__(self, app: ASGIApp, *, replica: str) -> None:
        self.app = app
        self.replica = replica.encode()

    def _headers(self, sent: set[bytes], headers: list[tuple[bytes, bytes]]) -> list[Any]:
        kept = [(n, v) for n, v in headers if not (n == _REQUEST_ID and v in sent)]
        return [*kept, (REPLICA_HEADER.encode(), self.replica)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Read before the app runs: the request id middleware rewrites a refused id in place.
        sent = {value for name, value in scope["headers"] if name == _REQUEST_ID}
        if scope["path"] != "/metrics":

            async def named(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": self._headers(sent, message["headers"])}
                await send(message)

            await self.app(scope, receive, named)
            return
        # The exposition is small: hold it whole, label it, send it with its new length.
        start: Message = {}
        body = b""

        async def labelled(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            body += message.get("body", b"")
            if message.get("more_body"):
                return
            if start["status"] == 200:
                body = label_samples(body.decode(), REPLICA_LABEL, self.replica.decode()).encode()
            headers = [(n, v) for n, v in start["headers"] if n != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": self._headers(sent, headers)})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, labelled)


def replica_app(replica: str) -> FastAPI:
    """The service as `scribe serve` runs it, named after `replica`."""
    from scribe_service.app import create_app

    app = create_app()
    # Outermost: even a 401 or a 413 names its replica.
    app.add_middleware(ReplicaIdentity, replica=replica)
    return app


def _build_replica_app() -> FastAPI:
    """Runs on each replica, when Serve starts it (Serve's ingress builder)."""
    from ray import serve

    return replica_app(serve.get_replica_context().replica_id.unique_id)


def build_app(args: dict[str, object]) -> Any:
    """The Serve application (`serve run scribe_service.ray_serve:build_app key=value …`).

    Arguments: Serve's `num_replicas` (default 2), or `min_replicas` and `max_replicas` to
    autoscale; `max_ongoing_requests`, `target_ongoing_requests`, `num_cpus` (per replica),
    `health_check_period_s`, `health_check_timeout_s`, `graceful_shutdown_timeout_s`; and any
    service setting by its field name (`judge_url=http://judge:8000/v1`), which reaches the
    replicas as its `SCRIBE_*` variable. Other settings come from the replicas' environment.
    """
    from ray import serve

    options = serve_options(args, os.environ)

    class ScribeService:
        """One replica of the service: the FastAPI app is all it serves."""

    ingress = serve.ingress(_build_replica_app)(ScribeService)
    return serve.deployment(ingress, **deployment_options(options)).bind()
