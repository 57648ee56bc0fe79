"""OpenRLHF: scribe-reward as a remote reward model, over HTTP or through a reward file.

The service itself speaks OpenRLHF's remote-RM protocol on ``POST /get_reward``, so the
plain way needs no code on the trainer side:

```bash
openrlhf.cli.train_ppo_ray ... --remote_rm_url http://scribe:8000/get_reward --label_key outcome
# OpenRLHF >= 0.10 (dotted flags): --reward.remote_url http://scribe:8000/get_reward
```

This file is the other way, ``--remote_rm_url /path/to/scribe_adapters/openrlhf.py``
(find the path with ``python -c "import scribe_adapters.openrlhf as m; print(m.__file__)"``).
OpenRLHF loads it by path and calls ``reward_func(queries, prompts, labels)`` in a worker
thread; it forwards them to ``/get_reward`` with the scribe client, so it can send an API
key (``SCRIBE_API_KEY``; OpenRLHF's own HTTP client cannot) and retries like the client.
``SCRIBE_URL`` names the service.

What the service does with the queries (prompt stripped, chat markup removed, numeric labels
as outcomes) is described in ``scribe_service/remote_rm.py``. OpenRLHF cannot take a missing
reward, so every sample gets a number: when the service cannot be reached, the sample's
outcome (a label in [0, 1]) or else ``SCRIBE_FAILURE_REWARD`` (default 0.0), and
``extra_logs["scribe_failed"]`` is 1 for it either way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from scribe_client import RewardClient, RewardServiceError
from scribe_client.protocol import RemoteRMRequest, RemoteRMResponse

__all__ = ["reward_func"]

log = logging.getLogger(__name__)

ENV_FAILURE_REWARD = "SCRIBE_FAILURE_REWARD"
EXTRA_LOG_KEYS = (
    "scribe_failed",
    "scribe_failed_steps",
    "scribe_outcome_given",
    "scribe_prompt_found",
)


class _RemoteRMClient(RewardClient):
    def get_reward(self, body: RemoteRMRequest) -> RemoteRMResponse:
        return self._call("POST", "/get_reward", RemoteRMResponse, body)


def _numeric(label: Any) -> float | None:
    try:
        value = float(label)
    except (TypeError, ValueError):
        return None
    return value if 0.0 <= value <= 1.0 else None


def _unscored(labels: Sequence[Any]) -> RemoteRMResponse:
    failure = float(os.environ.get(ENV_FAILURE_REWARD, "0.0"))
    outcomes = [_numeric(label) for label in labels]
    rewards = [failure if o is None else o for o in outcomes]
    logs = {key: [0.0] * len(labels) for key in EXTRA_LOG_KEYS}
    logs["scribe_failed"] = [1.0] * len(labels)
    logs["scribe_outcome_given"] = [float(o is not None) for o in outcomes]
    return RemoteRMResponse(rewards=rewards, scores=list(rewards), extra_logs=logs)


def reward_func(
    queries: Sequence[str],
    prompts: Sequence[str],
    labels: Sequence[Any],
    **kwargs: Any,  # noqa: ARG001 - room for what newer OpenRLHF releases pass
) -> dict[str, Any]:
    """OpenRLHF's reward-file entry point: one reward per query, always a number."""
    body = RemoteRMRequest(query=list(queries), prompts=list(prompts), labels=list(labels))
    try:
        with _RemoteRMClient() as client:
            answer = client.get_reward(body)
    except RewardServiceError as exc:
        log.warning(
            "scribe: %d samples not scored, using the failure policy: %s", len(queries), exc
        )
        answer = _unscored(body.labels or [None] * len(queries))
    # OpenRLHF's own reward files return tensors; it is already loaded in the trainer.
    import torch

    return {
        "rewards": torch.tensor(answer.rewards, dtype=torch.float32),
        "scores": torch.tensor(answer.scores, dtype=torch.float32),
        "extra_logs": {
            k: torch.tensor(v, dtype=torch.float32) for k, v in answer.extra_logs.items()
        },
    }
