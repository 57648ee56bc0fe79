"""The `scribe` arms of `scribe eval` judged by a running service (`--url`), not in-process.

Each record is sent once per arm as a `POST /v1/score` (its messages and tools, the reference
for `+ref`, the judge mode), and the steps of that record share the one answer. Judgment lines
are keyed and labelled by the steps as segmented here, so each answered step is matched by
`index` and checked by `message_index`: a service that segments otherwise (another version,
another segmenter) is an `EvalError` naming the record, never a silent shift of scores onto
the wrong labels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from scribe_client import AsyncRewardClient, RewardServiceError, StatusError
from scribe_client.protocol import JudgeInfo, ScoreOptions, ScoreRequest, ScoreResponse, StepResult
from scribe_service.evaluation.arms import ArmName, Outcome, StepItem, split_arm
from scribe_service.evaluation.records import Record
from scribe_service.evaluation.runner import EvalError
from scribe_service.pipeline.judge import JudgeMode, Sampling

ResponseKey = tuple[str, bool, JudgeMode]
"""(record id, with the reference, judge mode): one request each."""


@dataclass(frozen=True)
class ServiceInfo:
    """What the service says of itself, for `run.json`."""

    library_version: str
    judge_model: str | None
    not_ready: str | None
    """Why the service is not ready (its judge does not answer, …); None when it is."""


async def service_info(client: AsyncRewardClient) -> ServiceInfo:
    """The library version (`GET /v1/prototypes`) and judge model (`/readyz`) of the service."""
    try:
        listing = await client.prototypes()
        ready = await client.ready()
    except RewardServiceError as exc:
        raise EvalError(f"the service at {client.base_url} cannot answer: {exc}") from exc
    not_ready = None if ready.ready else (ready.detail or "not ready")
    return ServiceInfo(listing.library_version, ready.judge_model, not_ready)


def sampling_of(info: JudgeInfo) -> Sampling:
    return Sampling(
        temperature=info.temperature,
        top_p=info.top_p,
        max_tokens=info.max_tokens,
        seed=info.seed,
    )


def outcome_of(step: StepResult) -> Outcome:
    """A service step result as the judgment an in-process arm would have made."""
    checked = tuple(f.failure_mode for f in step.findings if f.source == "check")
    if step.status != "ok":
        error = step.error
        return Outcome(
            "failed",
            error=error.type if error else "failed",
            message=error.message if error else None,
            findings=checked,
        )
    return Outcome(
        "ok",
        score=step.score,
        expected_score=step.expected_score,
        reward=step.reward,
        rubric=step.prototype_id,
        findings=checked,
        judge_score=step.judge_score,
        judge_expected_score=step.judge_expected_score,
    )


class ServiceScorer:
    """Judges the `scribe` arms through the service, one memoised request per record and arm.

    A failed request (after the client's retries) fails every step of that record for this
    run; judgments.jsonl records the failures, and `--retry-failed` sends the record again.
    """

    def __init__(self, client: AsyncRewardClient, records: Mapping[str, Record]) -> None:
        self._client = client
        self._records = records
        self._responses: dict[ResponseKey, asyncio.Future[ScoreResponse]] = {}
        self.requests = 0
        """Score requests sent."""

    def request(self, record: Record, with_reference: bool, mode: JudgeMode) -> ScoreRequest:
        return record.request.model_copy(
            update={
                "request_id": f"eval:{record.id}",
                "reference": record.reference if with_reference else None,
                "options": ScoreOptions(judge_mode=mode),
            }
        )

    async def response(
        self, record_id: str, with_reference: bool, mode: JudgeMode
    ) -> ScoreResponse:
        key = (record_id, with_reference, mode)
        if key not in self._responses:
            request = self.request(self._records[record_id], with_reference, mode)
            self._responses[key] = asyncio.ensure_future(self._send(request))
        # Shielded: one step's job being cancelled must not cancel its siblings' answer.
        return await asyncio.shield(self._responses[key])

    async def _send(self, request: ScoreRequest) -> ScoreResponse:
        self.requests += 1
        return await self._client.score(request)

    async def judge(self, arm: ArmName, item: StepItem, mode: JudgeMode) -> Outcome:
        _, with_reference = split_arm(arm)
        try:
            response = await self.response(item.record_id, with_reference, mode)
        except RewardServiceError as exc:
            kind = f"service_{exc.status_code}" if isinstance(exc, StatusError) else "service"
            return Outcome("failed", error=kind, message=f"{type(exc).__name__}: {exc}")
        return outcome_of(matching_step(response, item))


def matching_step(response: ScoreResponse, item: StepItem) -> StepResult:
    """The answered step for `item`: same index and message index, or an `EvalError`."""
    where = f"record {item.record_id!r}, step {item.step.index}"
    by_index = {step.index: step for step in response.steps}
    step = by_index.get(item.step.index)
    if step is None or len(response.steps) != len(item.segmented.steps):
        raise EvalError(
            f"{where}: the service answered {len(response.steps)} steps "
            f"{sorted(by_index)}, segmented here into {len(item.segmented.steps)}; is it "
            "running another version of the segmenter?"
        )
    if step.message_index != item.step.message_index:
        raise EvalError(
            f"{where}: the service's step is message {step.message_index}, here it is "
            f"message {item.step.message_index}; is it running another version of the "
            "segmenter?"
        )
    return step
