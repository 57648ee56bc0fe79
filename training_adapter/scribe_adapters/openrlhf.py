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
as outcomes, other labels as the reference answer the judge checks each step against, failed
steps counted under the failure policy) is described in
``scribe_client/remote_rm.py``, the translation this file shares with the service.
OpenRLHF cannot take a missing reward, so every sample gets a number: when the service
cannot be reached, the stand-in of the failure policy (``SCRIBE_FAILURE_POLICY``, default
``pessimistic``: ``0.7 * outcome + 0.3 * SCRIBE_FAILURE_REWARD`` for a label in [0, 1], else
``SCRIBE_FAILURE_REWARD``, default 0.0, at most 0), and ``extra_logs["scribe_failed"]`` is 1
for it. Samples the service answered follow the service's own ``SCRIBE_FAILURE_*`` settings:
set the same values on both sides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

# Absolute imports only: OpenRLHF loads this file by its path, outside its package.
from scribe_adapters._requests import failure_rule
from scribe_client import RewardClient, RewardServiceError
from scribe_client.protocol import RemoteRMRequest, RemoteRMResponse
from scribe_client.remote_rm import unscored_response

__all__ = ["reward_func"]

log = logging.getLogger(__name__)


class _RemoteRMClient(RewardClient):
    def get_reward(self, body: RemoteRMRequest) -> RemoteRMResponse:
        return self._call("POST", "/get_reward", RemoteRMResponse, body)


def reward_func(
    queries: Sequence[str],
    prompts: Sequence[str],
    labels: Sequence[Any],
    **kwargs: Any,  # noqa: ARG001 - room for what newer OpenRLHF releases pass
) -> dict[str, Any]:
    """OpenRLHF's reward-file entry point: one reward per query, always a number."""
    body = RemoteRMRequest(query=list(queries), prompts=list(prompts), labels=list(labels))
    rule = failure_rule()  # read first: a bad SCRIBE_FAILURE_* must fail loudly, not late
    try:
        with _RemoteRMClient() as client:
            answer = client.get_reward(body)
    except RewardServiceError as exc:
        log.warning(
            "scribe: %d samples not scored, using the failure policy: %s", len(queries), exc
        )
        answer = unscored_response(body, policy=rule.policy, failure_reward=rule.reward)
    # OpenRLHF's own reward files return tensors; it is already loaded in the trainer.
    import torch

    return {
        "rewards": torch.tensor(answer.rewards, dtype=torch.float32),
        "scores": torch.tensor(answer.scores, dtype=torch.float32),
        "extra_logs": {
            k: torch.tensor(v, dtype=torch.float32) for k, v in answer.extra_logs.items()
        },
    }
