"""Python client for scribe-reward, the SCRIBE process-reward service for RL trainers.

It needs only httpx and pydantic, so a trainer node can install it without torch, FAISS or
a web framework::

    from scribe_client import RewardClient

    with RewardClient("http://scribe:8000") as client:
        reward = client.score({"prompt": "2 + 2?", "completion": "2 + 2 = 4."}).reward
"""

from ._client import AsyncRewardClient, RewardClient
from ._constants import __version__
from .errors import (
    AuthenticationError,
    InvalidRequestError,
    LibraryVersionError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ProtocolError,
    RewardServiceError,
    ServiceConnectionError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    StatusError,
)
from .protocol import (
    BatchScoreRequest,
    BatchScoreResponse,
    ErrorResponse,
    HealthResponse,
    PrototypeDetail,
    PrototypeList,
    ReadyResponse,
    RouteRequest,
    RouteResponse,
    ScoreOptions,
    ScoreRequest,
    ScoreResponse,
    StepInput,
    StepResult,
    StepRoute,
)
from .rewards import trainer_reward, training_reward, unscored_reward

__all__ = [
    "AsyncRewardClient",
    "AuthenticationError",
    "BatchScoreRequest",
    "BatchScoreResponse",
    "ErrorResponse",
    "HealthResponse",
    "InvalidRequestError",
    "LibraryVersionError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProtocolError",
    "PrototypeDetail",
    "PrototypeList",
    "ReadyResponse",
    "RewardClient",
    "RewardServiceError",
    "RouteRequest",
    "RouteResponse",
    "ScoreOptions",
    "ScoreRequest",
    "ScoreResponse",
    "ServiceConnectionError",
    "ServiceTimeoutError",
    "ServiceUnavailableError",
    "StatusError",
    "StepInput",
    "StepResult",
    "StepRoute",
    "__version__",
    "trainer_reward",
    "training_reward",
    "unscored_reward",
]
