"""The app factory. Nothing heavy happens at import: models, index and judge load once, in
the lifespan, and live on `app.state.pipeline` for the routes to use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from scribe_client.protocol import API_VERSION
from scribe_service.auth import APIKeyMiddleware
from scribe_service.bundled import ensure_judge_model
from scribe_service.errors import install_error_handlers
from scribe_service.library import load_library
from scribe_service.limits import BodySizeLimitMiddleware, InputLimits
from scribe_service.metrics import Metrics, RequestMetricsMiddleware
from scribe_service.miss_log import MissLog
from scribe_service.pipeline.aggregate import FailureRule
from scribe_service.pipeline.embed import Embedder, make_embedder
from scribe_service.pipeline.embed_batch import CoalescingEmbedder
from scribe_service.pipeline.embed_cache import CachedEmbedder
from scribe_service.pipeline.embed_store import stored
from scribe_service.pipeline.judge import EmbeddedJudge, Judge, JudgeBackend, OpenAIJudge, Sampling
from scribe_service.pipeline.judgment_cache import JudgmentCache
from scribe_service.pipeline.library_state import index_library
from scribe_service.pipeline.replicas import ReplicaPool
from scribe_service.pipeline.run import Pipeline
from scribe_service.reload import LibraryReloader, reload_on_sighup
from scribe_service.request_ids import HEADER, AccessLogMiddleware, acceptable_request_id
from scribe_service.resilience import JudgeHealth, RetryBudget
from scribe_service.routes import READY_CHECK_TIMEOUT, router
from scribe_service.score_log import ScoreLog
from scribe_service.settings import EMBEDDED_JUDGE_MODEL, Settings, retired_variables

log = logging.getLogger(__name__)


def make_judge_backend(settings: Settings) -> JudgeBackend:
    if settings.judge_urls:
        servers = [
            OpenAIJudge(
                url,
                model=settings.judge_model,
                api_key=settings.judge_api_key,
                dialect=settings.judge_dialect,
                timeout=settings.judge_timeout,
                max_connections=settings.judge_concurrency,
            )
            for url in settings.judge_urls
        ]
        if len(servers) == 1:
            return servers[0]
        return ReplicaPool(
            servers, threshold=settings.judge_unreachable_after, check_timeout=READY_CHECK_TIMEOUT
        )
    path = settings.judge_model_path or ensure_judge_model(settings.cache_dir)
    return EmbeddedJudge(
        path,
        model=settings.judge_model or EMBEDDED_JUDGE_MODEL,
        n_ctx=settings.embedded_n_ctx,
        n_threads=settings.embedded_threads,
        cache_bytes=settings.embedded_cache_mb * 2**20,
    )


def configured_embedder(settings: Settings) -> Embedder:
    """The embedder the SCRIBE_EMBEDDING_* settings name (blocking: it loads the model)."""
    return make_embedder(
        settings.embedding_model,
        backend=settings.embedding_backend,
        device=settings.embedding_device,
        batch_size=settings.embedding_batch_size,
        cache_dir=settings.cache_dir,
        export_dir=settings.embedding_export_dir,
        threads=settings.embedding_threads,
    )


def configured_judge(
    backend: JudgeBackend, settings: Settings, *, metrics: Metrics | None = None
) -> Judge:
    """The judge the SCRIBE_JUDGE_* settings describe, around `backend`: sampling, mode,
    timeout, retries and their budget, health tracking, and calls in flight (one for the
    embedded judge: one llama.cpp model instance runs one completion at a time anyway)."""
    embedded = isinstance(backend, EmbeddedJudge)
    return Judge(
        backend,
        concurrency=1 if embedded else settings.judge_concurrency,
        timeout=settings.judge_timeout,
        max_attempts=settings.judge_max_attempts,
        sampling=Sampling(
            temperature=settings.judge_temperature,
            top_p=settings.judge_top_p,
            max_tokens=settings.judge_max_tokens,
            seed=settings.judge_seed,
        ),
        mode=settings.judge_mode,
        min_score_mass=settings.judge_min_score_mass,
        backoff=settings.judge_backoff,
        backoff_max=settings.judge_backoff_max,
        retry_budget=RetryBudget(ratio=settings.judge_retry_budget),
        health=JudgeHealth(threshold=settings.judge_unreachable_after),
        metrics=metrics,
    )


async def build_pipeline(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    judge_backend: JudgeBackend | None = None,
    with_judge: bool = True,
    metrics: Metrics | None = None,
) -> Pipeline:
    """Load everything the pipeline needs; the injected parts replace the configured ones.

    Without a judge (`with_judge=False`) the pipeline can route but every judged step fails.
    """
    library = load_library(settings.prototypes_dir)
    if embedder is None:
        embedder = await asyncio.to_thread(configured_embedder, settings)
        # A restart finds the exemplars' vectors on disk instead of embedding them again.
        index_embedder = stored(embedder, settings.cache_dir)
    else:
        index_embedder = embedder  # injected: indexed with exactly what was given
    for warning in retired_variables(os.environ):
        log.warning(warning)
    index = (
        await asyncio.to_thread(index_library, library, index_embedder, settings.prototypes_dir)
    ).index
    if judge_backend is None and with_judge:
        judge_backend = await asyncio.to_thread(make_judge_backend, settings)
    metrics = metrics or Metrics()
    if settings.embedding_batch_window_ms:
        # Under the cache: only its misses wait for the window.
        embedder = CoalescingEmbedder(
            embedder,
            window=settings.embedding_batch_window_ms / 1000,
            max_batch=settings.embedding_batch_max,
        )
    if settings.embedding_cache_entries:
        # After the index: the exemplars are encoded once, and would only crowd out subgoals.
        embedder = _cached_embedder(embedder, settings.embedding_cache_entries, metrics)
    judge = None
    if judge_backend is not None:
        judge = configured_judge(judge_backend, settings, metrics=metrics)
        health = judge.health
        metrics.judge_available.set_function(lambda: float(health.available))
    log.info(
        "library %s: %d prototypes, %d exemplars indexed; judge %s",
        library.version,
        len(library.prototypes),
        index.size,
        judge_backend.model if judge_backend else "(none)",
    )
    return Pipeline(
        library=library,
        embedder=embedder,
        index=index,
        judge=judge,
        min_similarity=settings.min_similarity,
        max_step_chars=settings.max_step_chars,
        max_context_chars=settings.max_context_chars,
        limits=InputLimits(
            max_steps=settings.max_steps, max_step_chars=settings.max_step_input_chars
        ),
        request_deadline=settings.request_deadline,
        max_pending=settings.max_pending,
        retry_after=settings.retry_after,
        unavailable_retry_after=max(1, math.ceil(settings.judge_probe_interval)),
        metrics=metrics,
        failure_rule=FailureRule(settings.failure_policy, settings.failure_reward),
        judgment_cache=JudgmentCache(
            max_entries=settings.judgment_cache_entries,
            max_bytes=max(1, round(settings.judgment_cache_mb * 2**20)),
        )
        if settings.judgment_cache
        else None,
    )


def _cached_embedder(embedder: Embedder, entries: int, metrics: Metrics) -> CachedEmbedder:
    def count(hits: int, misses: int) -> None:
        metrics.embedding_cache.labels("hit").inc(hits)
        metrics.embedding_cache.labels("miss").inc(misses)

    return CachedEmbedder(embedder, entries, on_lookup=count)


def create_app(
    settings: Settings | None = None,
    *,
    embedder: Embedder | None = None,
    judge_backend: JudgeBackend | None = None,
) -> FastAPI:
    """Build the service. `embedder` and `judge_backend` replace the configured ones (tests)."""
    settings = settings or Settings()
    # Owned by the app, not the lifespan: the middleware counts requests from the first one.
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pipeline = await build_pipeline(
            settings, embedder=embedder, judge_backend=judge_backend, metrics=metrics
        )
        app.state.pipeline = pipeline
        score_log = ScoreLog(
            settings.score_log,
            library=pipeline.library,
            max_bytes=max(1, round(settings.score_log_max_mb * 2**20)),
            backups=settings.score_log_backups,
            registry=metrics.registry,
        )
        app.state.score_log = score_log
        miss_log = MissLog(
            settings.miss_log,
            max_bytes=max(1, round(settings.miss_log_max_mb * 2**20)),
            backups=settings.miss_log_backups,
            registry=metrics.registry,
        )
        pipeline.miss_log = miss_log
        app.state.reloader = LibraryReloader(
            pipeline,
            settings.prototypes_dir,
            metrics=metrics,
            on_swap=[lambda state: score_log.use_library(state.library)],
            # A reload reads and writes the exemplar store as the start did (not for an
            # injected embedder, which is indexed with exactly what was given).
            cache_dir=settings.cache_dir if embedder is None else None,
        )
        probing = None
        if pipeline.judge is not None:
            # Notices a judge going away between requests, and lets it back in once it returns.
            probing = asyncio.create_task(
                pipeline.judge.health.probe_forever(
                    pipeline.judge.backend.check,
                    interval=settings.judge_probe_interval,
                    timeout=READY_CHECK_TIMEOUT,
                    busy=lambda: pipeline.pending > 0,
                ),
                name="judge-probe",
            )
        try:
            async with reload_on_sighup(app.state.reloader):
                yield
        finally:
            if probing is not None:
                probing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probing
            if pipeline.judge is not None:
                await pipeline.judge.backend.aclose()
            # Drains the writer's queue: every answered request's lines reach the file.
            await asyncio.to_thread(score_log.close)
            await asyncio.to_thread(miss_log.close)

    # Swagger UI from the package's own copy, not a CDN: training clusters are often
    # air-gapped, and a CDN-backed /docs is a blank page there. No /redoc: its bundle still
    # fetches from cdn.redoc.ly when it renders.
    app = FastAPIOffline(
        redoc_url=None,
        title="scribe-reward",
        version=f"{API_VERSION}.0",
        summary="SCRIBE skill-conditioned process rewards for tool-using LLM trajectories.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key.get_secret_value())
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_middleware(AccessLogMiddleware)
    # Added last, so it is outermost: even a 401 or a 413 carries the request id.
    app.add_middleware(CorrelationIdMiddleware, header_name=HEADER, validator=acceptable_request_id)
    install_error_handlers(app)
    app.include_router(router)
    return app
