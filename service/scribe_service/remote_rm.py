"""``POST /get_reward``: OpenRLHF's remote reward model, scored through the pipeline.

The translation (prompt and markup removal, labels as outcomes, stand-ins, ``extra_logs``)
is `scribe_client.remote_rm`, shared with the reward file; this module only decides what
each sample's result is. OpenRLHF ends the run on an error response, so only a request that
is wrong as a whole (more queries than ``SCRIBE_MAX_BATCH``) gets one: a judge that cannot be
reached gives every sample its stand-in, and a sample over an input limit (too many steps, a
step too long) gets its stand-in alone, flagged ``scribe_refused``, while the others are
scored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from scribe_client.protocol import RemoteRMRequest, RemoteRMResponse, ScoreRequest, ScoreResponse
from scribe_client.remote_rm import Unscored, response, samples
from scribe_service.errors import InputLimitError, UnavailableError
from scribe_service.pipeline.run import Pipeline
from scribe_service.score_log import ScoreLog

log = logging.getLogger(__name__)

Result = ScoreResponse | Unscored


async def get_reward(
    body: RemoteRMRequest,
    pipeline: Pipeline,
    *,
    labels_are_outcomes: bool,
    score_log: ScoreLog | None = None,
) -> RemoteRMResponse:
    """A reward for every query of `body`, in order; the scored ones go to `score_log`."""
    scored = samples(body, labels_are_outcomes=labels_are_outcomes)
    results: list[Result] = [Unscored("empty")] * len(scored)
    todo = {i: sample.request for i, sample in enumerate(scored) if sample.request is not None}
    for position, result in (await _score(pipeline, todo)).items():
        results[position] = result
    if score_log is not None:
        score_log.record(r for r in results if isinstance(r, ScoreResponse))
    rule = pipeline.failure_rule
    return response(scored, results, policy=rule.policy, failure_reward=rule.reward)


async def _score(pipeline: Pipeline, todo: Mapping[int, ScoreRequest]) -> dict[int, Result]:
    if not todo:
        return {}
    try:
        answered: Sequence[Result] = await pipeline.score_batch(list(todo.values()))
    except UnavailableError as exc:
        log.warning("get_reward: %d samples get the stand-in: %s", len(todo), exc)
        answered = [Unscored("unavailable")] * len(todo)
    except InputLimitError:
        # Limits are checked before any judging, so scoring one by one loses nothing; only
        # the samples over a limit go without a result.
        answered = await asyncio.gather(*(_score_one(pipeline, i, r) for i, r in todo.items()))
    return dict(zip(todo, answered, strict=True))


async def _score_one(pipeline: Pipeline, position: int, request: ScoreRequest) -> Result:
    try:
        [result] = await pipeline.score_batch([request])
    except InputLimitError as exc:
        log.warning("get_reward: sample %d is over an input limit: %s", position, exc)
        return Unscored("refused")
    except UnavailableError as exc:
        log.warning("get_reward: sample %d gets the stand-in: %s", position, exc)
        return Unscored("unavailable")
    return result
