"""The service on real HTTP for the adapters: uvicorn in a thread, fake embedder and judge."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scribe_service.app import create_app
from scribe_service.pipeline.judge import JudgeError, Messages, Sampling
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, FakeJudge, free_port, uvicorn_in_thread


class DownJudge(FakeJudge):
    """Every verdict fails, as when the judge server is gone."""

    async def complete(
        self, messages: Messages, schema: dict[str, object], sampling: Sampling
    ) -> str:
        self.prompts.append(messages)
        raise JudgeError("judge is down")


def serve(judge: FakeJudge, tmp_path: Path, **overrides: Any) -> Iterator[str]:
    # The judges here are shared by a module's tests, which read the prompts reaching them:
    # without a judgment cache an adapter's request is judged, not answered from an earlier one.
    values: dict[str, Any] = {"judge_max_attempts": 1, "judgment_cache": False}
    settings = Settings(
        prototypes_dir=PROTOTYPES, cache_dir=tmp_path / "cache", **(values | overrides)
    )
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=judge)
    with uvicorn_in_thread(app, timeout=20) as url:
        yield url


@pytest.fixture(scope="module")
def judge() -> FakeJudge:
    return FakeJudge(score=3)


@pytest.fixture(scope="module")
def service_url(judge: FakeJudge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service whose judge gives every step 3 (reward 1.0)."""
    yield from serve(judge, tmp_path_factory.mktemp("service"))


@pytest.fixture(scope="module")
def down_service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service whose judge fails every step."""
    yield from serve(DownJudge(), tmp_path_factory.mktemp("down"))


@pytest.fixture(scope="module")
def short_steps_url(judge: FakeJudge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like `service_url`, but a step over 200 characters makes its whole batch a 422."""
    yield from serve(judge, tmp_path_factory.mktemp("short"), max_step_input_chars=200)


@pytest.fixture
def partial_service_url(tmp_path: Path) -> Iterator[str]:
    """A service whose judge fails the first step it sees and gives the rest 3."""
    yield from serve(FakeJudge(replies=[JudgeError("lost")], score=3), tmp_path)


@pytest.fixture
def closed_url() -> str:
    """Nothing listens here."""
    return f"http://127.0.0.1:{free_port()}"
