"""HTTP routes: thin handlers that validate, call the pipeline and return wire models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scribe_client.protocol import (
    BatchScoreRequest,
    BatchScoreResponse,
    ErrorResponse,
    FailureModeInfo,
    HealthResponse,
    PrototypeDetail,
    PrototypeList,
    PrototypeSummary,
    ReadyResponse,
    ReloadRequest,
    ReloadResponse,
    RemoteRMRequest,
    RemoteRMResponse,
    RouteRequest,
    RouteResponse,
    ScoreRequest,
    ScoreResponse,
)
from scribe_service import remote_rm
from scribe_service.deps import PipelineDep, SettingsDep
from scribe_service.errors import InputLimitError, ServiceError
from scribe_service.library import Prototype
from scribe_service.reload import ReloaderDep
from scribe_service.resilience import probe
from scribe_service.score_log import ScoreLogDep

READY_CHECK_TIMEOUT = 5.0

router = APIRouter(
    responses={
        400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
        401: {"model": ErrorResponse, "description": "Missing or wrong API key (when set)."},
        413: {"model": ErrorResponse, "description": "Body larger than SCRIBE_MAX_BODY_BYTES."},
        422: {"model": ErrorResponse, "description": "Invalid request; `param` names the field."},
        500: {"model": ErrorResponse},
    }
)

# What a judged route may answer besides success: come back later, with Retry-After; or
# never, for a request pinned to a library version that no longer serves.
SCORING_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorResponse,
        "description": "`options.library_version` is not the serving version (named).",
    },
    429: {"model": ErrorResponse, "description": "Too many trajectories waiting (Retry-After)."},
    503: {"model": ErrorResponse, "description": "The judge is unreachable (Retry-After)."},
}


@router.post(
    "/v1/score", response_model=ScoreResponse, responses=SCORING_RESPONSES, tags=["scoring"]
)
async def score(
    request: ScoreRequest, pipeline: PipelineDep, score_log: ScoreLogDep
) -> ScoreResponse:
    """Score one trajectory: a reward per step against its skill prototype, and the scalars."""
    result = await pipeline.score(request)
    score_log.record([result])
    return result


def _check_batch(count: int, param: str, limit: int) -> None:
    if count > limit:
        raise InputLimitError(
            param, f"{count} items, more than the limit of {limit} (SCRIBE_MAX_BATCH)"
        )


@router.post(
    "/v1/score/batch",
    response_model=BatchScoreResponse,
    responses=SCORING_RESPONSES,
    tags=["scoring"],
)
async def score_batch(
    request: BatchScoreRequest, pipeline: PipelineDep, settings: SettingsDep, score_log: ScoreLogDep
) -> BatchScoreResponse:
    """Score several trajectories (e.g. one GRPO group); results keep the request order."""
    _check_batch(len(request.requests), "requests", settings.max_batch)
    results = await pipeline.score_batch(request.requests)
    score_log.record(results)
    return BatchScoreResponse(results=results)


@router.post("/get_reward", response_model=RemoteRMResponse, tags=["trainers"])
async def get_reward(
    request: RemoteRMRequest, pipeline: PipelineDep, settings: SettingsDep, score_log: ScoreLogDep
) -> RemoteRMResponse:
    """OpenRLHF's remote reward model (`--remote_rm_url http://…/get_reward`)."""
    _check_batch(len(request.query), "query", settings.max_batch)
    return await remote_rm.get_reward(
        request,
        pipeline,
        labels_are_outcomes=settings.remote_rm_labels_are_outcomes,
        score_log=score_log,
    )


@router.post("/v1/route", response_model=RouteResponse, tags=["scoring"])
async def route(request: RouteRequest, pipeline: PipelineDep) -> RouteResponse:
    """Segment a trajectory and route each step to a prototype, without judging."""
    return await pipeline.route(request)


def _summary(prototype: Prototype) -> PrototypeSummary:
    return PrototypeSummary(
        id=prototype.id,
        name=prototype.name,
        domain=prototype.domain,
        usage_context=prototype.usage_context.strip(),
    )


@router.get("/v1/prototypes", response_model=PrototypeList, tags=["library"])
async def prototypes(pipeline: PipelineDep) -> PrototypeList:
    """List the skill prototypes of the loaded library."""
    library = pipeline.library
    return PrototypeList(
        library_version=library.version,
        prototypes=[_summary(p) for p in library.prototypes.values()],
    )


@router.get(
    "/v1/prototypes/{prototype_id}",
    response_model=PrototypeDetail,
    responses={404: {"model": ErrorResponse}},
    tags=["library"],
)
async def prototype(prototype_id: str, pipeline: PipelineDep) -> PrototypeDetail:
    """One prototype's full rubric."""
    found = pipeline.library.prototypes.get(prototype_id)
    if found is None:
        raise ServiceError(404, f"no prototype {prototype_id!r}", param="prototype_id")
    return PrototypeDetail(
        **_summary(found).model_dump(),
        reasoning_pattern=found.reasoning_pattern.strip(),
        levels=found.levels,
        failure_modes=[FailureModeInfo(**mode.model_dump()) for mode in found.failure_modes],
        exemplars=list(found.exemplars),
        checks=list(found.checks),
    )


@router.post(
    "/v1/admin/reload",
    response_model=ReloadResponse,
    responses={
        403: {"model": ErrorResponse, "description": "The service has no SCRIBE_API_KEY."},
        422: {
            "model": ErrorResponse,
            "description": "The library does not load (the message names file and field); "
            "the serving one stays.",
        },
    },
    tags=["ops"],
)
async def reload_library(
    reloader: ReloaderDep, settings: SettingsDep, body: ReloadRequest | None = None
) -> ReloadResponse:
    """Load, validate and swap in a prototypes directory; requests in flight finish on the
    version they started with."""
    # Swapping the rubrics changes every reward: only a caller holding the key may. A service
    # with no key has no such caller (SIGHUP still reloads it).
    if settings.api_key is None:
        raise ServiceError(
            403,
            "reloading the library needs an API key: set SCRIBE_API_KEY on the service and "
            "send it as `Authorization: Bearer <key>` (or send the process SIGHUP)",
        )
    directory = None if body is None or body.prototypes_dir is None else body.prototypes_dir
    reloaded = await reloader.reload(None if directory is None else Path(directory))
    return reloaded.response()


@router.get("/metrics", response_class=Response, tags=["ops"])
async def metrics(pipeline: PipelineDep) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(pipeline.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=HealthResponse, tags=["ops"])
async def healthz() -> HealthResponse:
    """Liveness: the process answers."""
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Not ready; `checks` says why."}},
    tags=["ops"],
)
async def readyz(pipeline: PipelineDep) -> JSONResponse:
    """Readiness: index loaded and the judge answering."""
    checks = {"library": True, "index": pipeline.index.size > 0, "judge": False}
    detail: str | None = "judge: none configured"
    if pipeline.judge is not None:
        result = await probe(pipeline.judge.backend.check, READY_CHECK_TIMEOUT)
        pipeline.judge.health.record_probe(result, busy=pipeline.pending > 0)
        # One missed check of a busy judge is not an outage; the health threshold decides.
        checks["judge"] = pipeline.judge.health.available
        detail = None if result.error is None else f"judge: {result.error}"
    ready = all(checks.values())
    body = ReadyResponse(
        ready=ready,
        library_version=pipeline.library.version,
        prototypes=len(pipeline.library.prototypes),
        judge_model=pipeline.judge_model,
        checks=checks,
        detail=detail,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
