"""verl: scribe-reward as a custom `compute_score` for verl's reward managers and Reward Loop.

```yaml
# verl >= 0.7 (reward.*); older releases use the top-level custom_reward_function block.
reward:
  custom_reward_function:
    path: pkg://scribe_adapters.verl
    name: compute_score_async        # or compute_score (verl runs it in a thread)
    reward_kwargs:
      scribe_url: http://scribe:8000
      # optional: the outcome (0..1) mixed in as 0.7 * outcome + 0.3 * process reward
      outcome_fn: verl.utils.reward_score.default_compute_score
      failure_reward: 0.0             # optional, <= 0; failure_policy: pessimistic (default)
```

verl calls it once per response as ``compute_score(data_source=…, solution_str=…,
ground_truth=…, extra_info=…)``, with the ``reward_kwargs`` added as keywords. The response
text is scored as one completion (the service splits the steps); ``extra_info["question"]``
(or ``"prompt"``), when it is a string, is sent as the task.

**Reference.** ``ground_truth`` goes with the request as its ``reference``, so the judge
checks each step against the known answer instead of solving the task itself
(docs/reference.md): a string as it is, a list as a JSON array of acceptable answers (one
item alone as itself), a dict with ``"target"`` (Search-R1's form) as its target, numpy
arrays as their lists. ``send_reference: false`` in ``reward_kwargs`` sends none.

**Outcome.** A number in [0, 1] from ``extra_info["outcome"]``, else from ``outcome_fn``: a
callable or its dotted path, called with verl's four arguments and returning a number or a
dict with ``"score"`` (verl's own rule-based scorers qualify). Without one, the score is the
process reward alone.

**Failures.** verl cannot take a missing reward (``None`` stops training), and a failure must
never pay, so ``score`` is the service's ``training_reward``: a failed step counts as
``failure_reward`` (default 0.0, at most 0), and a response with no judged step, or none the
service could score, gets ``0.7 * outcome + 0.3 * failure_reward`` (``failure_reward``
without an outcome): never more than a judged response with the same outcome. That is the
``pessimistic`` failure policy; ``failure_policy: exclude`` restores the exploitable old
rule (judged steps only, the bare outcome when none was judged). Both fall back to
``SCRIBE_FAILURE_POLICY`` / ``SCRIBE_FAILURE_REWARD`` and are sent with every request, so the
service applies the same rule (``scribe_client.rewards``). ``failure_score`` is the old name
of ``failure_reward``. ``scribe_status`` says what happened, beside the number:

* ``ok`` / ``partial`` - judged (``partial``: some steps failed and count as failures);
* ``failed`` - no step could be judged; ``invalid`` - the service cannot take the response
  (e.g. it is empty); ``unavailable`` - the service did not answer after the retries.

Every call returns the same keys, which verl's Reward Loop requires: ``score``,
``scribe_status``, ``scribe_reward``, ``scribe_process_reward``, ``scribe_outcome``,
``scribe_steps`` and ``scribe_failed_steps`` (None where not known; verl's metrics skip
None and strings).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from scribe_client import AsyncRewardClient, RewardClient, RewardServiceError
from scribe_client.protocol import ScoreOptions, ScoreRequest, ScoreResponse
from scribe_client.reference import reference_text
from scribe_client.rewards import FailureRule, trainer_reward

from ._requests import check_outcome, failure_rule, trajectory_request, with_rule

__all__ = ["compute_score", "compute_score_async"]

log = logging.getLogger(__name__)

ScoreDict = dict[str, Any]
OutcomeFn = Callable[..., Any]


def _resolve(outcome_fn: OutcomeFn | str) -> OutcomeFn:
    if callable(outcome_fn):
        return outcome_fn
    module, _, name = outcome_fn.replace(":", ".").rpartition(".")
    found: OutcomeFn = getattr(importlib.import_module(module), name)
    return found


def _outcome(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any],
    outcome_fn: OutcomeFn | str | None,
) -> float | None:
    if extra_info.get("outcome") is not None:
        return check_outcome(extra_info["outcome"])
    if outcome_fn is None:
        return None
    value = _resolve(outcome_fn)(data_source, solution_str, ground_truth, extra_info)
    return check_outcome(value["score"] if isinstance(value, Mapping) else value)


def _options(
    options: Mapping[str, Any] | None,
    failure_policy: str | None,
    failure_reward: float | None,
    failure_score: float | None,
) -> tuple[ScoreOptions, FailureRule]:
    given = ScoreOptions.model_validate(options or {})
    if failure_reward is None:
        failure_reward = failure_score
    rule = failure_rule(failure_policy, failure_reward, given)
    return with_rule(given, rule), rule


def _request(
    solution_str: str,
    extra_info: Mapping[str, Any],
    outcome: float | None,
    options: ScoreOptions,
    reference: str | None,
) -> ScoreRequest | None:
    prompt = extra_info.get("question", extra_info.get("prompt"))
    try:
        return trajectory_request(
            prompt if isinstance(prompt, str) else None,
            solution_str,
            outcome=outcome,
            options=options,
            reference=reference,
        )
    except ValidationError as exc:
        log.info("scribe: response not scored: %s", exc.errors()[0]["msg"])
        return None


def _score_dict(
    result: ScoreResponse | None,
    status: str,
    outcome: float | None,
    options: ScoreOptions,
    rule: FailureRule,
) -> ScoreDict:
    score = trainer_reward(result, outcome, options, policy=rule.policy, failure_reward=rule.reward)
    return {
        "score": float(score),
        "scribe_status": status,
        "scribe_reward": None if result is None else result.reward,
        "scribe_process_reward": None if result is None else result.process_reward,
        "scribe_outcome": outcome,
        "scribe_steps": None if result is None else len(result.steps),
        "scribe_failed_steps": None
        if result is None
        else sum(step.status == "failed" for step in result.steps),
    }


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    scribe_url: str | None = None,
    scribe_api_key: str | None = None,
    outcome_fn: OutcomeFn | str | None = None,
    failure_reward: float | None = None,
    failure_policy: str | None = None,
    options: Mapping[str, Any] | None = None,
    failure_score: float | None = None,
    send_reference: bool = True,
    **kwargs: Any,  # noqa: ARG001 - verl's extras (reward_router_address…) are not needed
) -> ScoreDict:
    """Score one response through the service (blocking). See the module docstring.

    ``scribe_url`` / ``scribe_api_key`` fall back to ``SCRIBE_URL`` / ``SCRIBE_API_KEY``;
    ``options`` are `ScoreOptions` fields (``aggregation``, ``outcome_weight``, …);
    ``failure_reward`` / ``failure_policy`` choose the failure policy (``failure_score`` is
    the old name of ``failure_reward``); ``send_reference=False`` keeps ``ground_truth``
    from the judge. Other keywords verl passes
    (``reward_router_address``…) are accepted and unused.
    """
    info = extra_info or {}
    sent, rule = _options(options, failure_policy, failure_reward, failure_score)
    outcome = _outcome(data_source, solution_str, ground_truth, info, outcome_fn)
    reference = reference_text(ground_truth) if send_reference else None
    request = _request(solution_str, info, outcome, sent, reference)
    if request is None:
        return _score_dict(None, "invalid", outcome, sent, rule)
    try:
        # A client per call: nothing to close, and a connection costs little next to judging.
        with RewardClient(scribe_url, api_key=scribe_api_key) as client:
            result = client.score(request)
    except RewardServiceError as exc:
        log.warning("scribe: response not scored, using the failure policy: %s", exc)
        return _score_dict(None, "unavailable", outcome, sent, rule)
    return _score_dict(result, result.status, outcome, sent, rule)


async def compute_score_async(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    scribe_url: str | None = None,
    scribe_api_key: str | None = None,
    outcome_fn: OutcomeFn | str | None = None,
    failure_reward: float | None = None,
    failure_policy: str | None = None,
    options: Mapping[str, Any] | None = None,
    failure_score: float | None = None,
    send_reference: bool = True,
    **kwargs: Any,  # noqa: ARG001 - verl's extras (reward_router_address…) are not needed
) -> ScoreDict:
    """The `async` twin of `compute_score`, for verl's Reward Loop (awaited on its loop)."""
    info = extra_info or {}
    sent, rule = _options(options, failure_policy, failure_reward, failure_score)
    outcome = _outcome(data_source, solution_str, ground_truth, info, outcome_fn)
    reference = reference_text(ground_truth) if send_reference else None
    request = _request(solution_str, info, outcome, sent, reference)
    if request is None:
        return _score_dict(None, "invalid", outcome, sent, rule)
    try:
        # A client per call: the Reward Loop's event loop is not ours to bind a pool to.
        async with AsyncRewardClient(scribe_url, api_key=scribe_api_key) as client:
            result = await client.score(request)
    except RewardServiceError as exc:
        log.warning("scribe: response not scored, using the failure policy: %s", exc)
        return _score_dict(None, "unavailable", outcome, sent, rule)
    return _score_dict(result, result.status, outcome, sent, rule)
