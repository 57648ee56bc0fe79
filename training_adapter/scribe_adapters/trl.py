"""TRL: scribe-reward as a `GRPOTrainer` reward function.

```python
from trl import GRPOConfig, GRPOTrainer
from scribe_adapters.trl import AsyncScribeReward

trainer = GRPOTrainer(
    model="Qwen/Qwen2.5-0.5B-Instruct",
    # Logged as rewards/scribe/mean. An `outcome` column in the dataset (a number in [0, 1],
    # e.g. answer correctness) makes each reward 0.7 * outcome + 0.3 * process reward.
    # `metadata` (optional) and TRL's step go with every request, for `scribe eval curves`.
    reward_funcs=[AsyncScribeReward("http://scribe:8000", metadata={"run": "grpo-7"})],
    train_dataset=dataset,
    args=GRPOConfig(output_dir="out"),
)
```

`AsyncScribeReward` is the one to use: TRL runs `async` reward functions concurrently with the
others. `ScribeReward` is its blocking twin. Both score the whole generation batch (every
prompt × `num_generations` completions) in one `/v1/score/batch` call.

* Plain text rollouts are sent as `prompt` + `completion` (the service splits the steps);
  conversational ones, tool calls and tool results included, as `messages` (one step per
  assistant message).
* The outcome comes from the dataset column `outcome_column` (default ``"outcome"``), or
  from ``outcome_fn``: any function with TRL's reward-function signature that returns one
  value in [0, 1] (or None) per completion, such as an existing accuracy reward.
* The known answer goes with each request as its ``reference``, so the judge checks each step
  against it instead of solving the task itself (docs/reference.md). It comes from the first
  dataset column present of ``reference_column`` (default ``("reference", "ground_truth",
  "solution", "answer")``; one name, or None to send none); a list of acceptable answers is
  sent as a JSON array.
* Every request carries ``metadata`` for the service's score log and ``scribe eval curves``
  (docs/score-log.md): the adapter's ``metadata`` (e.g. ``{"run": "grpo-7"}``) plus
  ``global_step``, the optimizer step of the ``trainer_state`` TRL passes to reward functions
  (TRL 1.16 does; without it, or outside a trainer, only the adapter's ``metadata`` goes).
* Each reward is the service's ``training_reward``: a failed step counts as
  ``failure_reward`` (default 0.0, at most 0; failure policy ``pessimistic``). A completion
  with no judged step gets ``0.7 * outcome + 0.3 * failure_reward`` (``failure_reward``
  without an outcome), never more than a judged completion with the same outcome: a failed
  judge (status ``failed``), a rollout the service cannot take (an empty completion) and,
  unless ``raise_errors=True``, a chunk of the batch the service did not answer after the
  client's retries (chunks already scored keep their rewards). When the service refuses a
  chunk (422/413: a rollout over an input limit), its rollouts are sent one by one, so only
  the ones over the limit get the stand-in.
* Why not ``None``? TRL accepts it (nanmean), and a completion for which every reward
  function says ``None`` gets advantage 0: in a GRPO group that spares a broken rollout the
  negative advantage a judged bad one gets, so a policy would learn to break the judge.
  ``unscored_as_none=True`` returns ``None`` for completions with no judged step anyway
  (e.g. when another reward function carries the signal); ``failure_policy="exclude"``
  leaves failed steps out (exploitable, see `scribe_client.rewards`).
* The metrics ``scribe/failed`` (fraction of the batch with no judged step),
  ``scribe/failed_steps`` (fraction of steps that failed) and ``scribe/process_reward``
  (mean over the completions that have one) go to TRL's logs beside ``rewards/scribe/mean``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from scribe_client import AsyncRewardClient, RewardClient, RewardServiceError, ScoreOptions
from scribe_client._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from scribe_client.errors import InvalidRequestError, PayloadTooLargeError
from scribe_client.protocol import FailurePolicy, ScoreRequest, ScoreResponse
from scribe_client.reference import reference_text
from scribe_client.rewards import trainer_reward

from ._requests import check_outcome, failure_rule, trajectory_request, with_rule

__all__ = ["AsyncScribeReward", "ScribeReward"]

log = logging.getLogger(__name__)

# The service's default SCRIBE_MAX_BATCH; bigger generation batches go in several calls.
DEFAULT_MAX_BATCH = 256
# Where TRL datasets keep the known answer (TRL's own accuracy reward reads `solution`).
DEFAULT_REFERENCE_COLUMNS = ("reference", "ground_truth", "solution", "answer")

# The metadata key `scribe eval curves` plots against by default.
STEP_KEY = "global_step"
# The largest step the size check reserves room for: a run never gets near it.
_LARGEST_STEP = 2**63

OutcomeFn = Callable[..., Sequence[float | bool | None]]
Rewards = list[float | None]
ReferenceColumn = str | Sequence[str] | None


@dataclass(frozen=True)
class _Rollout:
    request: ScoreRequest | None  # None: the service would refuse it
    outcome: float | None


class _ScribeRewardBase:
    """What both twins share: rollouts → requests, responses → rewards and metrics."""

    def __init__(
        self,
        base_url: str | None,
        *,
        api_key: str | None,
        outcome_column: str | None,
        outcome_fn: OutcomeFn | None,
        reference_column: ReferenceColumn,
        options: ScoreOptions | Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        failure_policy: FailurePolicy | None,
        failure_reward: float | None,
        unscored_as_none: bool,
        name: str,
        raise_errors: bool,
        max_batch: int,
        timeout: float | httpx.Timeout,
        max_retries: int,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.outcome_column = outcome_column
        self.outcome_fn = outcome_fn
        self.reference_columns: tuple[str, ...] = (
            (reference_column,)
            if isinstance(reference_column, str)
            else tuple(reference_column or ())
        )
        given = None if options is None else ScoreOptions.model_validate(options)
        self.failure_rule = failure_rule(failure_policy, failure_reward, given)
        self.options = with_rule(given, self.failure_rule)
        self.metadata = _checked_metadata(metadata)
        self.unscored_as_none = unscored_as_none
        # TRL names the logged metrics after `__name__` (rewards/<name>/mean).
        self.__name__ = name
        self.raise_errors = raise_errors
        self.max_batch = max_batch
        self.timeout = timeout
        self.max_retries = max_retries

    def _outcomes(
        self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: Any
    ) -> list[Any]:
        if self.outcome_fn is not None:
            values = list(self.outcome_fn(prompts=prompts, completions=completions, **kwargs))
        elif self.outcome_column is not None and self.outcome_column in kwargs:
            values = list(kwargs[self.outcome_column])
        else:
            return [None] * len(completions)
        if len(values) != len(completions):
            raise ValueError(f"{len(values)} outcomes for {len(completions)} completions")
        return values

    def _references(self, completions: Sequence[Any], kwargs: Any) -> list[str | None]:
        # TRL passes every dataset column, repeated once per generation, as a keyword.
        column = next((name for name in self.reference_columns if name in kwargs), None)
        if column is None:
            return [None] * len(completions)
        values = list(kwargs[column])
        if len(values) != len(completions):
            raise ValueError(f"{len(values)} {column!r} values for {len(completions)} completions")
        return [reference_text(value) for value in values]

    def _metadata(self, kwargs: Any) -> dict[str, Any] | None:
        """The adapter's metadata plus the trainer's step, when TRL passed its state."""
        step = getattr(kwargs.get("trainer_state"), "global_step", None)
        if isinstance(step, bool) or not isinstance(step, int):
            return self.metadata
        # The trainer's count wins over a `global_step` given to the constructor, which
        # could only be a constant.
        return {**(self.metadata or {}), STEP_KEY: step}

    def _rollouts(
        self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: Any
    ) -> list[_Rollout]:
        outcomes = self._outcomes(prompts, completions, kwargs)
        references = self._references(completions, kwargs)
        metadata = self._metadata(kwargs)
        rollouts: list[_Rollout] = []
        for prompt, completion, value, reference in zip(
            prompts, completions, outcomes, references, strict=True
        ):
            outcome = check_outcome(value)
            try:
                request = trajectory_request(
                    prompt,
                    completion,
                    outcome=outcome,
                    options=self.options,
                    reference=reference,
                    metadata=metadata,
                )
            except ValidationError as exc:
                # One rollout the service would refuse (e.g. empty) must not sink the batch.
                log.info("scribe: completion not scored: %s", exc.errors()[0]["msg"])
                request = None
            rollouts.append(_Rollout(request, outcome))
        return rollouts

    def _chunks(self, rollouts: Sequence[_Rollout]) -> list[list[ScoreRequest]]:
        valid = [r.request for r in rollouts if r.request is not None]
        return [valid[i : i + self.max_batch] for i in range(0, len(valid), self.max_batch)]

    @staticmethod
    def _refused(exc: RewardServiceError) -> bool:
        # One rollout over a limit makes the service refuse the whole batch call; sent alone,
        # the others are scored and only that one is refused.
        return isinstance(exc, InvalidRequestError | PayloadTooLargeError)

    def _failed(self, exc: RewardServiceError, chunk: Sequence[ScoreRequest]) -> list[None]:
        if self.raise_errors:
            raise exc
        log.warning(
            "scribe: %d completions not scored, they get the failure stand-in: %s", len(chunk), exc
        )
        return [None] * len(chunk)

    def _rewards(
        self,
        rollouts: Sequence[_Rollout],
        results: Sequence[ScoreResponse | None],
        kwargs: Any,
    ) -> Rewards:
        """`results` line up with the rollouts that have a request (None: not answered)."""
        answered = iter(results)
        rewards: Rewards = []
        process: list[float] = []
        unjudged = steps = failed_steps = 0
        for rollout in rollouts:
            result = None if rollout.request is None else next(answered)
            judged = result is not None and result.status != "failed"
            if judged or not self.unscored_as_none:
                rule = self.failure_rule
                reward = trainer_reward(
                    result,
                    rollout.outcome,
                    self.options,
                    policy=rule.policy,
                    failure_reward=rule.reward,
                )
                rewards.append(reward)
            else:
                rewards.append(None)
            unjudged += not judged
            if result is not None:
                steps += len(result.steps)
                failed_steps += sum(step.status == "failed" for step in result.steps)
                if result.process_reward is not None:
                    process.append(result.process_reward)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and rewards:
            log_metric("scribe/failed", unjudged / len(rewards))
            if steps:
                log_metric("scribe/failed_steps", failed_steps / steps)
            if process:
                log_metric("scribe/process_reward", sum(process) / len(process))
        return rewards


class ScribeReward(_ScribeRewardBase):
    """A blocking TRL reward function backed by the scribe-reward service.

    **Parameters** (all keyword-only after ``base_url``):

    * **base_url**, **api_key**, **timeout**, **max_retries** - as for `RewardClient`
      (``SCRIBE_URL`` / ``SCRIBE_API_KEY`` when unset).
    * **outcome_column** - the dataset column holding the outcome in [0, 1]; None ignores it.
    * **outcome_fn** - computes the outcomes instead, called like a TRL reward function.
    * **reference_column** - the dataset column(s) holding the known answer, sent as each
      request's ``reference``: the first one present (default ``"reference"``,
      ``"ground_truth"``, ``"solution"``, ``"answer"``); None sends no reference.
    * **options** - `ScoreOptions` sent with every request (aggregation, weights).
    * **metadata** - JSON sent as every request's ``metadata`` (e.g. ``{"run": "grpo-7"}``),
      with ``global_step`` from TRL's ``trainer_state`` added; at most 4 KiB as JSON.
    * **failure_policy**, **failure_reward** - how failed steps and unscored completions
      count (``pessimistic``, 0.0; at most 0): the argument, else the field of ``options``,
      else ``SCRIBE_FAILURE_POLICY`` / ``SCRIBE_FAILURE_REWARD``. Sent with every request.
    * **unscored_as_none** - ``None`` instead of the stand-in for a completion with no
      judged step (TRL then gives it no advantage from this function; see the module doc).
    * **name** - the name TRL logs the rewards under (``rewards/<name>/mean``).
    * **raise_errors** - raise when the service cannot be reached or refuses a chunk of the
      batch, instead of giving its completions the stand-in.
    * **http_client** - an ``httpx.Client`` to send with (tests, proxies).

    Each call opens its own connection pool (unless ``http_client`` is given), so there is
    nothing to close; one call per generation batch makes that cheap. The async twin needs
    it anyway: an httpx pool must not outlive the event loop that made it.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        outcome_column: str | None = "outcome",
        outcome_fn: OutcomeFn | None = None,
        reference_column: ReferenceColumn = DEFAULT_REFERENCE_COLUMNS,
        options: ScoreOptions | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        failure_policy: FailurePolicy | None = None,
        failure_reward: float | None = None,
        unscored_as_none: bool = False,
        name: str = "scribe",
        raise_errors: bool = False,
        max_batch: int = DEFAULT_MAX_BATCH,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            outcome_column=outcome_column,
            outcome_fn=outcome_fn,
            reference_column=reference_column,
            options=options,
            metadata=metadata,
            failure_policy=failure_policy,
            failure_reward=failure_reward,
            unscored_as_none=unscored_as_none,
            name=name,
            raise_errors=raise_errors,
            max_batch=max_batch,
            timeout=timeout,
            max_retries=max_retries,
        )
        self._http_client = http_client

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> Rewards:
        rollouts = self._rollouts(prompts, completions, kwargs)
        client = RewardClient(
            self.base_url, api_key=self.api_key, timeout=self.timeout,
            max_retries=self.max_retries, http_client=self._http_client,
        )  # fmt: skip
        answered: list[ScoreResponse | None] = []
        with client:
            for chunk in self._chunks(rollouts):
                try:
                    answered += client.score_batch(chunk)
                except RewardServiceError as exc:
                    if not self._refused(exc) or len(chunk) == 1:
                        answered += self._failed(exc, chunk)
                        continue
                    for request in chunk:
                        try:
                            answered.append(client.score(request))
                        except RewardServiceError as alone:
                            answered += self._failed(alone, [request])
        return self._rewards(rollouts, answered, kwargs)


class AsyncScribeReward(_ScribeRewardBase):
    """The `async` twin of `ScribeReward`, with the same parameters."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        outcome_column: str | None = "outcome",
        outcome_fn: OutcomeFn | None = None,
        reference_column: ReferenceColumn = DEFAULT_REFERENCE_COLUMNS,
        options: ScoreOptions | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        failure_policy: FailurePolicy | None = None,
        failure_reward: float | None = None,
        unscored_as_none: bool = False,
        name: str = "scribe",
        raise_errors: bool = False,
        max_batch: int = DEFAULT_MAX_BATCH,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            outcome_column=outcome_column,
            outcome_fn=outcome_fn,
            reference_column=reference_column,
            options=options,
            metadata=metadata,
            failure_policy=failure_policy,
            failure_reward=failure_reward,
            unscored_as_none=unscored_as_none,
            name=name,
            raise_errors=raise_errors,
            max_batch=max_batch,
            timeout=timeout,
            max_retries=max_retries,
        )
        self._http_client = http_client

    async def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> Rewards:
        rollouts = self._rollouts(prompts, completions, kwargs)
        client = AsyncRewardClient(
            self.base_url, api_key=self.api_key, timeout=self.timeout,
            max_retries=self.max_retries, http_client=self._http_client,
        )  # fmt: skip
        answered: list[ScoreResponse | None] = []
        async with client:
            for chunk in self._chunks(rollouts):
                try:
                    answered += await client.score_batch(chunk)
                except RewardServiceError as exc:
                    if not self._refused(exc) or len(chunk) == 1:
                        answered += self._failed(exc, chunk)
                        continue
                    for request in chunk:
                        try:
                            answered.append(await client.score(request))
                        except RewardServiceError as alone:
                            answered += self._failed(alone, [request])
        return self._rewards(rollouts, answered, kwargs)


def _checked_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`metadata` as sent, refused now if the service would refuse it with a step added: a
    bad value must fail when the trainer is set up, not turn every reward into a stand-in."""
    if metadata is None:
        return None
    given = dict(metadata)
    try:
        probe = {"completion": "-", "metadata": {**given, STEP_KEY: _LARGEST_STEP}}
        ScoreRequest.model_validate(probe).model_dump_json()
    except ValidationError as exc:
        raise ValueError(f"metadata: {exc.errors()[0]['msg']}") from exc
    except PydanticSerializationError as exc:
        raise ValueError(f"metadata is not JSON: {exc}") from exc
    return given
