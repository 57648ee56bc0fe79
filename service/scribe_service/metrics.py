"""Prometheus metrics, one registry per app (so two apps in one process never collide).

Requests by route and status, latency per pipeline stage, judge calls by outcome, retries,
judge calls in flight, trajectories pending, steps by status, fallback routes, and the
judgment and embedding caches, library reloads.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Judging on a CPU takes tens of seconds, on a GPU server well under one: cover both.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "scribe_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "scribe_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "scribe_stage_seconds",
            "Latency of a pipeline stage (segment, embed, route, aggregate: one request; "
            "render, checks, judge: one step, the judge's retries included)",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.judge_calls = Counter(
            "scribe_judge_calls", "Judge calls by outcome (ok or the error type)", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.judge_retries = Counter("scribe_judge_retries", "Judge calls retried", registry=r)
        self.judge_output_tokens = Counter(
            "scribe_judge_output_tokens",
            "Tokens the judge generated (from its usage), by mode (verdict or logprob)",
            ["mode"],
            registry=r,
        )
        self.judge_retries_denied = Counter(
            "scribe_judge_retries_denied", "Retries refused by the retry budget", registry=r
        )
        self.judge_available = Gauge(
            "scribe_judge_available", "1 while the judge is reachable, 0 while down", registry=r
        )
        self.unavailable_rejections = Counter(
            "scribe_unavailable_rejections", "Requests answered 503: judge down", registry=r
        )
        self.judge_in_flight = Gauge("scribe_judge_in_flight", "Judge calls in flight", registry=r)
        self.pending = Gauge(
            "scribe_pending_trajectories", "Trajectories accepted, not yet answered", registry=r
        )
        self.steps = Counter("scribe_steps", "Steps scored, by status", ["status"], registry=r)
        # What the policy is being paid, per skill: the Grafana panel that shows a prototype's
        # scores drifting (learnt, or hacked) without reading the score log. Bounded labels: the
        # library's prototype ids times four buckets.
        self.step_score = Histogram(
            "scribe_step_score",
            "Final score (0-3, after checks) of the judged steps, by prototype",
            ["prototype"],
            buckets=(0, 1, 2, 3),
            registry=r,
        )
        self.fallback_routes = Counter(
            "scribe_fallback_routes", "Steps routed to the fallback rubric", registry=r
        )
        self.judgment_cache = Counter(
            "scribe_judgment_cache",
            "Deterministic judge calls by what the judgment cache did: hit (stored), miss "
            "(judged), coalesced (shared an identical call in flight)",
            ["result"],
            registry=r,
        )
        self.judgment_cache_entries = Gauge(
            "scribe_judgment_cache_entries", "Verdicts held by the judgment cache", registry=r
        )
        self.library_reloads = Counter(
            "scribe_library_reloads",
            "Library reloads (POST /v1/admin/reload, SIGHUP) by outcome: ok (a new version "
            "serves), unchanged (same version), invalid (refused: it does not load), failed "
            "(indexing failed)",
            ["outcome"],
            registry=r,
        )
        # Every outcome at 0 from the start: a panel over a rare event shows zero, not "no data".
        for outcome in ("ok", "unchanged", "invalid", "failed"):
            self.library_reloads.labels(outcome)
        self.embedding_cache = Counter(
            "scribe_embedding_cache",
            "Subgoals by embedding cache result: hit (not encoded: stored, or repeated in "
            "one call), miss (encoded, each distinct text once)",
            ["result"],
            registry=r,
        )


class RequestMetricsMiddleware:
    """Counts every HTTP request by route template and status."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            # The route template, not the raw path: ids must not explode the label set.
            route = getattr(scope.get("route"), "path", "unmatched")
            self._metrics.requests.labels(route, str(status)).inc()
            self._metrics.request_seconds.labels(route).observe(time.perf_counter() - start)
