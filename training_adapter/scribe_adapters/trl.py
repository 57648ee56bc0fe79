"""TRL: scribe-reward as a `GRPOTrainer` reward function.

```python
from trl import GRPOConfig, GRPOTrainer
from scribe_adapters.trl import AsyncScribeReward

trainer = GRPOTrainer(
    model="Qwen/Qwen2.5-0.5B-Instruct",
    # Logged as rewards/scribe/mean. An `outcome` column in the dataset (a number in [0, 1],
    # e.g. answer correctness) makes each reward 0.7 * outcome + 0.3 * process reward.
    reward_funcs=[AsyncScribeReward("http://scribe:8000")],
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
* A completion that could not be scored gets ``None``, never a made-up 0: TRL then leaves
  it out of this function's mean and, if every function says None, gives it no advantage.
  That covers a failed judge (response status ``failed``), a rollout the service cannot take
  (an empty completion) and, unless ``raise_errors=True``, the service being unreachable
  after the client's retries. The metrics ``scribe/failed`` (fraction of the batch) and
  ``scribe/process_reward`` go to TRL's logs beside ``rewards/scribe/mean``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from pydantic import ValidationError

from scribe_client import AsyncRewardClient, RewardClient, RewardServiceError, ScoreOptions
from scribe_client._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from scribe_client.protocol import ScoreRequest, ScoreResponse

from ._requests import check_outcome, trajectory_request

__all__ = ["AsyncScribeReward", "ScribeReward"]

log = logging.getLogger(__name__)

# The service's default SCRIBE_MAX_BATCH; bigger generation batches go in several calls.
DEFAULT_MAX_BATCH = 256

OutcomeFn = Callable[..., Sequence[float | bool | None]]
Rewards = list[float | None]


class _ScribeRewardBase:
    """What both twins share: rollouts → requests, responses → rewards and metrics."""

    def __init__(
        self,
        base_url: str | None,
        *,
        api_key: str | None,
        outcome_column: str | None,
        outcome_fn: OutcomeFn | None,
        options: ScoreOptions | Mapping[str, Any] | None,
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
        self.options = None if options is None else ScoreOptions.model_validate(options)
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

    def _requests(
        self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: Any
    ) -> list[ScoreRequest | None]:
        outcomes = self._outcomes(prompts, completions, kwargs)
        requests: list[ScoreRequest | None] = []
        for prompt, completion, outcome in zip(prompts, completions, outcomes, strict=True):
            try:
                request = trajectory_request(
                    prompt, completion, outcome=check_outcome(outcome), options=self.options
                )
            except ValidationError as exc:
                # One rollout the service would refuse (e.g. empty) must not sink the batch.
                log.info("scribe: completion not scored: %s", exc.errors()[0]["msg"])
                request = None
            requests.append(request)
        return requests

    def _chunks(self, requests: Sequence[ScoreRequest | None]) -> list[list[ScoreRequest]]:
        valid = [r for r in requests if r is not None]
        return [valid[i : i + self.max_batch] for i in range(0, len(valid), self.max_batch)]

    def _failed(self, exc: RewardServiceError) -> None:
        if self.raise_errors:
            raise exc
        log.warning("scribe: the batch was not scored, its rewards are None: %s", exc)

    def _rewards(
        self,
        requests: Sequence[ScoreRequest | None],
        results: Sequence[ScoreResponse] | None,
        kwargs: Any,
    ) -> Rewards:
        answered = iter(results or ())
        rewards: Rewards = []
        process: list[float] = []
        for request in requests:
            result = next(answered, None) if request is not None and results is not None else None
            rewards.append(None if result is None else result.reward)
            if result is not None and result.process_reward is not None:
                process.append(result.process_reward)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and rewards:
            log_metric("scribe/failed", sum(r is None for r in rewards) / len(rewards))
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
    * **options** - `ScoreOptions` sent with every request (aggregation, weights).
    * **name** - the name TRL logs the rewards under (``rewards/<name>/mean``).
    * **raise_errors** - raise when the service cannot be reached or refuses the batch,
      instead of returning None for every completion.
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
        options: ScoreOptions | Mapping[str, Any] | None = None,
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
            options=options,
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
        requests = self._requests(prompts, completions, kwargs)
        client = RewardClient(
            self.base_url, api_key=self.api_key, timeout=self.timeout,
            max_retries=self.max_retries, http_client=self._http_client,
        )  # fmt: skip
        answered: list[ScoreResponse] = []
        with client:
            try:
                for chunk in self._chunks(requests):
                    answered += client.score_batch(chunk)
            except RewardServiceError as exc:
                self._failed(exc)
                return self._rewards(requests, None, kwargs)
        return self._rewards(requests, answered, kwargs)


class AsyncScribeReward(_ScribeRewardBase):
    """The `async` twin of `ScribeReward`, with the same parameters."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        outcome_column: str | None = "outcome",
        outcome_fn: OutcomeFn | None = None,
        options: ScoreOptions | Mapping[str, Any] | None = None,
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
            options=options,
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
        requests = self._requests(prompts, completions, kwargs)
        client = AsyncRewardClient(
            self.base_url, api_key=self.api_key, timeout=self.timeout,
            max_retries=self.max_retries, http_client=self._http_client,
        )  # fmt: skip
        answered: list[ScoreResponse] = []
        async with client:
            try:
                for chunk in self._chunks(requests):
                    answered += await client.score_batch(chunk)
            except RewardServiceError as exc:
                self._failed(exc)
                return self._rewards(requests, None, kwargs)
        return self._rewards(requests, answered, kwargs)
