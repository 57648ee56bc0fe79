"""The pipeline: segment → embed → route → render → judge → aggregate.

`Pipeline` holds what the lifespan loaded once (library, embedder, index, judge) and runs the
stages in order; each stage is a module of its own, and each is timed under its name
(`scribe_stage_seconds{stage=...}`). Contract: every step of an accepted request comes back,
in order, either judged (`status: ok`) or with an explicit error (`status: failed`).

Each stage fails on its own. A step's own stages (render, judge) fail that step alone, with
a typed `StepError`, and its siblings are judged regardless. The request-wide stages
(segment, embed, route: a batch embeds all its subgoals in one encode call) and aggregate
(pure arithmetic on the step results) have no step to pin a failure on: an unexpected one
fails the request with a 500 that names the stage. Steps are judged concurrently;
the judge's own semaphore is the one global bound on calls in flight.

Before a step is judged, the routed prototype's deterministic checks and those every step
gets (`checks.step_checks`, timed as stage `checks`) run on it; their findings cap the
verdict by `checks.apply_findings`, the rule `scribe eval` uses too. A check that raises is
a bug in the check, not in the step: it is logged, counted (`check_errors`) and skipped.

With a `JudgmentCache`, a deterministic judge call identical to one judged before (or in flight)
is not made again (`judgment_cache.py`); the step then says `cached: true`.

The library and its index are one `LibraryState`, which a reload (`reload.py`) replaces while
requests run. A request reads it once and hands it down every stage, so it is routed, rendered,
cached and answered under one version, the one its response names. A request pinned to
another version (`options.library_version`) is refused with 409 before anything runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scribe_client.protocol import (
    Finding,
    JudgeInfo,
    RouteRequest,
    RouteResponse,
    ScoreRequest,
    ScoreResponse,
    StepError,
    StepResult,
    StepRoute,
)
from scribe_service.errors import (
    InputLimitError,
    LibraryVersionError,
    OverloadedError,
    ServiceError,
    UnavailableError,
)
from scribe_service.library import Library, Prototype
from scribe_service.limits import InputLimits
from scribe_service.metrics import Metrics
from scribe_service.miss_log import MissLog
from scribe_service.pipeline import aggregate
from scribe_service.pipeline.checks import (
    CheckFinding,
    apply_findings,
    check_input,
    run_checks_isolated,
    step_checks,
)
from scribe_service.pipeline.embed import Embedder, Vectors
from scribe_service.pipeline.judge import Judge, JudgeError, JudgeMode, Messages, Verdict
from scribe_service.pipeline.judgment_cache import JudgmentCache, deterministic, judgment_key
from scribe_service.pipeline.library_state import LibraryState
from scribe_service.pipeline.logprob import TOP_LOGPROBS
from scribe_service.pipeline.render import render_messages
from scribe_service.pipeline.retrieve import PrototypeIndex, Route
from scribe_service.pipeline.segment import Segmented, Step, segment

log = logging.getLogger(__name__)

RequestStage = Literal["segment", "embed", "route", "aggregate"]


class StageError(ServiceError):
    """A request-wide stage failed unexpectedly: HTTP 500 that names the stage (the traceback
    goes to the log, not to the caller)."""

    def __init__(self, stage: RequestStage, exc: Exception) -> None:
        super().__init__(500, f"the {stage} stage failed ({type(exc).__name__})", type="internal")
        self.stage = stage


@dataclass(frozen=True)
class Routed:
    segmented: Segmented
    routes: list[Route]


@dataclass(frozen=True)
class Judged:
    verdict: Verdict
    cached: bool | None
    """Whether the judgment cache answered; None when it was not consulted."""


def _step_route(step: Step, route: Route) -> StepRoute:
    return StepRoute(
        index=step.index,
        message_index=step.message_index,
        char_span=step.char_span,
        subgoal=step.subgoal,
        subgoal_source=step.subgoal_source,
        prototype_id=route.prototype.id,
        similarity=route.similarity,
        fallback=route.fallback,
    )


def _check_limits(
    request: ScoreRequest | RouteRequest, segmented: Segmented, limits: InputLimits, prefix: str
) -> None:
    form = (
        "messages"
        if request.messages is not None
        else "completion"
        if request.completion
        else "steps"
    )
    if len(segmented.steps) > limits.max_steps:
        raise InputLimitError(
            prefix + form,
            f"{len(segmented.steps)} steps, more than the limit of {limits.max_steps} "
            "(SCRIBE_MAX_STEPS)",
        )
    for step in segmented.steps:
        if len(step.content) > limits.max_step_chars:
            where = step.message_index if step.message_index is not None else step.index
            at = f"{prefix}{form}" + ("" if form == "completion" else f"[{where}]")
            raise InputLimitError(
                at,
                f"step {step.index} has {len(step.content)} characters, more than the limit of "
                f"{limits.max_step_chars} (SCRIBE_MAX_STEP_INPUT_CHARS)",
            )


class Pipeline:
    def __init__(
        self,
        *,
        library: Library,
        embedder: Embedder,
        index: PrototypeIndex,
        judge: Judge | None,
        min_similarity: float,
        max_step_chars: int,
        max_context_chars: int,
        limits: InputLimits | None = None,
        request_deadline: float | None = None,
        max_pending: int | None = None,
        retry_after: int = 5,
        unavailable_retry_after: int = 5,
        metrics: Metrics | None = None,
        failure_rule: aggregate.FailureRule | None = None,
        judgment_cache: JudgmentCache | None = None,
    ) -> None:
        self.state = LibraryState(library, index)
        """The library and index served now; read once per request (a reload swaps it)."""
        self.embedder = embedder
        self.judge = judge
        self.min_similarity = min_similarity
        self._max_step_chars = max_step_chars
        self._max_context_chars = max_context_chars
        self._limits = limits
        self._request_deadline = request_deadline
        self._max_pending = max_pending
        self._retry_after = retry_after
        self._unavailable_retry_after = unavailable_retry_after
        self.pending = 0
        """Trajectories accepted for scoring and not yet answered."""
        self.metrics = metrics or Metrics()
        self.failure_rule = failure_rule or aggregate.FailureRule()
        """The failure policy and reward where a request's options leave them null."""
        self.check_errors = 0
        """Deterministic checks that raised (a bug: logged, skipped, the step still scored)."""
        self.judgment_cache = judgment_cache
        if judgment_cache is not None:
            self.metrics.judgment_cache_entries.set_function(lambda: float(len(judgment_cache)))
        self.miss_log: MissLog | None = None
        """Where scored steps routed to the fallback are logged (SCRIBE_MISS_LOG)."""

    @property
    def library(self) -> Library:
        """The library served now; a request uses the `state` it read when it began."""
        return self.state.library

    @property
    def index(self) -> PrototypeIndex:
        return self.state.index

    @property
    def judge_model(self) -> str:
        return self.judge.backend.model if self.judge else "(none)"

    def judge_info(self, mode: JudgeMode | None) -> JudgeInfo | None:
        """The judge's mode and sampling as sent on first attempts, for the response."""
        if self.judge is None:
            return None
        mode = mode or self.judge.mode
        sampling = self.judge.sampling(mode)
        logprob = mode == "logprob"
        return JudgeInfo(
            model=self.judge_model,
            mode=mode,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            max_tokens=sampling.max_tokens,
            top_logprobs=TOP_LOGPROBS if logprob else None,
            min_score_mass=self.judge.min_score_mass if logprob else None,
        )

    @contextlib.contextmanager
    def _stage(self, name: RequestStage) -> Iterator[None]:
        """Time a request-wide stage; a failure other than the caller's own (a `ServiceError`
        such as an input limit) becomes a `StageError` naming it."""
        with self.metrics.stage_seconds.labels(name).time():
            try:
                yield
            except ServiceError:
                raise
            except Exception as exc:
                log.exception("the %s stage failed", name)
                raise StageError(name, exc) from exc

    async def _route_all(
        self,
        requests: Sequence[ScoreRequest | RouteRequest],
        thresholds: Sequence[float],
        index: PrototypeIndex,
    ) -> list[Routed]:
        """The request-wide stages: segment → embed → route."""
        segmented = self._segment(requests)
        vectors = await self._embed(segmented)
        return self._route(segmented, vectors, thresholds, index)

    def _segment(self, requests: Sequence[ScoreRequest | RouteRequest]) -> list[Segmented]:
        with self._stage("segment"):
            segmented = [
                segment(
                    messages=r.messages, completion=r.completion, steps=r.steps, prompt=r.prompt
                )
                for r in requests
            ]
            if self._limits is not None:
                for position, (request, item) in enumerate(zip(requests, segmented, strict=True)):
                    prefix = f"requests[{position}]." if len(requests) > 1 else ""
                    _check_limits(request, item, self._limits, prefix)
        return segmented

    async def _embed(self, segmented: Sequence[Segmented]) -> Vectors:
        subgoals = [step.subgoal for s in segmented for step in s.steps]
        with self._stage("embed"):
            # Encoding is CPU-bound: keep it off the event loop.
            return await asyncio.to_thread(self.embedder.encode, subgoals)

    def _route(
        self,
        segmented: Sequence[Segmented],
        vectors: Vectors,
        thresholds: Sequence[float],
        index: PrototypeIndex,
    ) -> list[Routed]:
        with self._stage("route"):
            routed, offset = [], 0
            for item, threshold in zip(segmented, thresholds, strict=True):
                count = len(item.steps)
                routes = index.route(vectors[offset : offset + count], threshold, item.steps)
                routed.append(Routed(item, routes))
                offset += count
        self.metrics.fallback_routes.inc(sum(r.fallback for item in routed for r in item.routes))
        return routed

    async def route(self, request: RouteRequest) -> RouteResponse:
        state = self.state
        threshold = (
            state.index.default_min_similarity(self.min_similarity)
            if request.min_similarity is None
            else request.min_similarity
        )
        [routed] = await self._route_all([request], [threshold], state.index)
        return RouteResponse(
            request_id=request.request_id or uuid.uuid4().hex,
            steps=[
                _step_route(s, r)
                for s, r in zip(routed.segmented.steps, routed.routes, strict=True)
            ],
            library_version=state.version,
        )

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        [response] = await self.score_batch([request])
        return response

    async def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResponse]:
        # Read once: a reload during this request does not change what it is scored with.
        state = self.state
        _check_pins(requests, state.version)
        if self.judge is not None and not self.judge.health.available:
            # Every step would fail anyway: say so at once, and when to come back.
            self.metrics.unavailable_rejections.inc()
            raise UnavailableError(
                f"the judge is unreachable ({self.judge.health.reason}); scoring resumes "
                "automatically when it answers again",
                self._unavailable_retry_after,
            )
        # Admission control: beyond the bound a caller is told to come back (429 with
        # Retry-After) instead of queueing without limit behind the judge.
        if self._max_pending is not None and self.pending + len(requests) > self._max_pending:
            raise OverloadedError(
                f"{self.pending} trajectories are already waiting for the judge "
                f"(SCRIBE_MAX_PENDING={self._max_pending}); retry later",
                self._retry_after,
            )
        self.pending += len(requests)
        self.metrics.pending.set(self.pending)
        try:
            return await self._score_batch(requests, state)
        finally:
            self.pending -= len(requests)
            self.metrics.pending.set(self.pending)

    async def _score_batch(
        self, requests: Sequence[ScoreRequest], state: LibraryState
    ) -> list[ScoreResponse]:
        # A router fitted for the library replaces the configured threshold, not a request's.
        default = state.index.default_min_similarity(self.min_similarity)
        thresholds = [
            default if r.options.min_similarity is None else r.options.min_similarity
            for r in requests
        ]
        routed = await self._route_all(requests, thresholds, state.index)  # segment → embed → route
        # Then, for each trajectory: render → judge for each step, and aggregate.
        responses = list(
            await asyncio.gather(
                *(
                    self._judge_trajectory(req, item, state.library)
                    for req, item in zip(requests, routed, strict=True)
                )
            )
        )
        if self.miss_log is not None:
            for response, item, threshold in zip(responses, routed, thresholds, strict=True):
                self.miss_log.record(response, item.segmented.steps, item.routes, threshold)
        return responses

    async def _judge_step(
        self,
        segmented: Segmented,
        step: Step,
        route: Route,
        deadline: float | None,
        mode: JudgeMode | None,
        *,
        library: Library,
        tools: Sequence[Mapping[str, Any]] | None = None,
        reference: str | None = None,
    ) -> StepResult:
        """A step's own stages, checks → render → judge; whatever fails there fails this step
        only. The checks' findings cap the verdict, and are reported even when judging failed."""
        base = _step_route(step, route).model_dump()
        found = self._check(segmented, step, route.prototype, tools, reference)
        outcome = await self._render_and_judge(
            segmented, step, route, deadline, mode, library, reference
        )
        if isinstance(outcome, StepError):
            findings = [_check_finding(f) for f in found]
            result = StepResult(
                **base,
                status="failed",
                error=outcome,
                failure_modes=[f.failure_mode for f in findings],
                findings=findings,
            )
        else:
            result = _judged(base, outcome, route.prototype, found)
        self.metrics.steps.labels(result.status).inc()
        if result.score is not None:
            self.metrics.step_score.labels(result.prototype_id).observe(result.score)
        return result

    def _check(
        self,
        segmented: Segmented,
        step: Step,
        prototype: Prototype,
        tools: Sequence[Mapping[str, Any]] | None,
        reference: str | None,
    ) -> list[CheckFinding]:
        """The deterministic checks for the routed prototype (`step_checks`); one that raises
        is logged and skipped, never a failed step or request."""
        with self.metrics.stage_seconds.labels("checks").time():
            try:
                inp = check_input(segmented, step, tools, reference)
            except Exception:
                log.exception("building the check input of step %d failed", step.index)
                self.check_errors += 1
                return []
            findings, errors = run_checks_isolated(step_checks(prototype.checks), inp)
        for name, exc in errors:
            log.error("check %s failed on step %d", name, step.index, exc_info=exc)
        self.check_errors += len(errors)
        return findings

    async def _render_and_judge(
        self,
        segmented: Segmented,
        step: Step,
        route: Route,
        deadline: float | None,
        mode: JudgeMode | None,
        library: Library,
        reference: str | None = None,
    ) -> Judged | StepError:
        if self.judge is None:
            return StepError(type="judge_unavailable", message="no judge configured")
        mode = mode or self.judge.mode
        try:
            with self.metrics.stage_seconds.labels("render").time():
                messages = render_messages(
                    library,
                    route.prototype,
                    segmented,
                    step,
                    max_step_chars=self._max_step_chars,
                    max_context_chars=self._max_context_chars,
                    mode=mode,
                    reference=reference,
                )
        except Exception as exc:  # a bug must fail the step visibly, not the whole request
            log.exception("rendering step %d failed", step.index)
            return StepError(type="internal", message=f"render: {type(exc).__name__}: {exc}")
        with self.metrics.stage_seconds.labels("judge").time():
            return await self._judge(messages, route, deadline, mode, step.index, library.version)

    async def _judge(
        self,
        messages: Messages,
        route: Route,
        deadline: float | None,
        mode: JudgeMode,
        index: int,
        library_version: str,
    ) -> Judged | StepError:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._verdict(messages, route.prototype, mode, library_version)
        except TimeoutError:
            message = f"request deadline of {self._request_deadline:g}s passed before a verdict"
            return StepError(type="judge_timeout", message=message)
        except JudgeError as exc:
            return StepError(type=exc.type, message=str(exc))
        except Exception as exc:  # a bug must fail the step visibly, not the whole request
            log.exception("judging step %d failed unexpectedly", index)
            return StepError(type="internal", message=f"judge: {type(exc).__name__}: {exc}")

    async def _verdict(
        self, messages: Messages, prototype: Prototype, mode: JudgeMode, library_version: str
    ) -> Judged:
        """The judge's verdict, through the judgment cache where the call is deterministic."""
        judge = self.judge
        assert judge is not None  # checked by the caller
        sampling = judge.sampling(mode)
        if self.judgment_cache is None or not deterministic(mode, sampling):
            return Judged(await judge.verdict(messages, prototype, mode), cached=None)
        key = judgment_key(
            judge_model=judge.backend.model,
            prototype_id=prototype.id,
            library_version=library_version,
            mode=mode,
            sampling=sampling,
            min_score_mass=judge.min_score_mass,
            messages=messages,
        )
        verdict, result = await self.judgment_cache.get_or_judge(
            key, lambda: judge.verdict(messages, prototype, mode)
        )
        self.metrics.judgment_cache.labels(result).inc()
        return Judged(verdict, cached=result != "miss")

    async def _judge_trajectory(
        self, request: ScoreRequest, routed: Routed, library: Library
    ) -> ScoreResponse:
        deadline = (
            None
            if self._request_deadline is None
            else asyncio.get_running_loop().time() + self._request_deadline
        )
        results = await asyncio.gather(
            *(
                self._judge_step(
                    routed.segmented,
                    step,
                    route,
                    deadline,
                    request.options.judge_mode,
                    library=library,
                    tools=request.tools,
                    reference=request.reference,
                )
                for step, route in zip(routed.segmented.steps, routed.routes, strict=True)
            )
        )
        with self._stage("aggregate"):
            return self._aggregate(request, list(results), library.version)

    def _aggregate(
        self, request: ScoreRequest, results: list[StepResult], library_version: str
    ) -> ScoreResponse:
        options = request.options
        scalars = aggregate.scalars(
            [r.reward for r in results], request.outcome, options, self.failure_rule
        )
        return ScoreResponse(
            request_id=request.request_id or uuid.uuid4().hex,
            status=aggregate.overall_status([r.status for r in results]),
            reward=scalars.reward,
            process_reward=scalars.process_reward,
            outcome_reward=request.outcome,
            training_reward=scalars.training_reward,
            failure_policy=scalars.failure_policy,
            failure_reward=scalars.failure_reward,
            steps=list(results),
            library_version=library_version,
            judge_model=self.judge_model,
            judge=self.judge_info(options.judge_mode),
            metadata=request.metadata,
        )


def _check_pins(requests: Sequence[ScoreRequest], serving: str) -> None:
    """A request pinned to a library version is scored by that version or not at all: a
    trainer comparing rewards across a run must not get a silently different rubric."""
    for position, request in enumerate(requests):
        pinned = request.options.library_version
        if pinned is not None and pinned != serving:
            prefix = f"requests[{position}]." if len(requests) > 1 else ""
            raise LibraryVersionError(f"{prefix}options.library_version", pinned, serving)


def _check_finding(finding: CheckFinding) -> Finding:
    return Finding(
        failure_mode=finding.failure_mode,
        source="check",
        check=finding.check,
        description=finding.description,
        max_score=finding.max_score,
    )


def _judge_findings(prototype: Prototype, failure_modes: Sequence[str]) -> list[Finding]:
    modes = {mode.id: mode for mode in prototype.failure_modes}
    return [
        Finding(
            failure_mode=mode_id,
            source="judge",
            description=modes[mode_id].description,
            max_score=modes[mode_id].max_score,
        )
        for mode_id in failure_modes
        if mode_id in modes  # the verdict was validated against this prototype's list
    ]


def _judged(
    base: dict[str, Any], judgment: Judged, prototype: Prototype, found: Sequence[CheckFinding]
) -> StepResult:
    verdict = judgment.verdict
    findings = [*_judge_findings(prototype, verdict.failure_modes), *map(_check_finding, found)]
    judged = verdict
    verdict = apply_findings(verdict, found)
    capped = (verdict.score, verdict.expected_score) != (judged.score, judged.expected_score)
    graded = verdict.score if verdict.expected_score is None else verdict.expected_score
    return StepResult(
        **base,
        score=verdict.score,
        reward=aggregate.step_reward(graded),
        expected_score=verdict.expected_score,
        judge_score=judged.score if capped else None,
        judge_expected_score=judged.expected_score if capped else None,
        score_mass=verdict.score_mass,
        failure_modes=list(verdict.failure_modes),
        findings=findings,
        rationale=verdict.rationale,
        judge_replica=verdict.served_by,
        cached=judgment.cached,
        status="ok",
    )
