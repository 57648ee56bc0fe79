"""Real trainer libraries, each in its own virtualenv under build/venvs, against a live service.

A trainer venv gets torch (the local CPU wheel, pinned first so pip never reaches for a CUDA
build), the trainer library, and scribe-reward installed *without extras*: the adapters must
work with what the trainer already has. tests/venvs.py holds the recipes and makes each venv
once, again only when its recipe changes (build/ is git-ignored). The service is `scribe
serve` in a subprocess (real uvicorn, MiniLM, FAISS) judging with SmolLM2-135M behind
llama.cpp's server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import ROOT, scribe_server, smollm2_gguf
from venvs import RECIPES, BuildError, ensure_venv

BUILD = ROOT / "build"
SCRIPTS = Path(__file__).parent / "scripts"


def trainer_python(name: str) -> Path:
    """The python of the trainer's venv, made on first use; a failed build fails the test."""
    try:
        return ensure_venv(RECIPES[name])
    except BuildError as exc:
        pytest.fail(str(exc))


def run_script(
    python: Path, script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> None:
    """Run tests/trainers/scripts/<script> in a trainer venv; its output shows on failure."""
    done = subprocess.run(
        [str(python), str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("SCRIBE_")},
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        },
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{script} exited {done.returncode}:\n{done.stdout[-4000:]}{done.stderr[-6000:]}"
        )


RunScript = Callable[..., None]


@pytest.fixture(scope="session")
def run_trainer_script() -> RunScript:
    return run_script


@pytest.fixture(scope="session")
def trl_python() -> Path:
    return trainer_python("trl")


@pytest.fixture(scope="session")
def verl_python() -> Path:
    return trainer_python("verl")


@pytest.fixture(scope="session")
def openrlhf_python() -> Path:
    return trainer_python("openrlhf")


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Path:
    """SmolLM2's Hugging Face tokenizer (chat template included), read from the bundled GGUF
    once by the main venv's transformers (with the dev extra's `gguf`): no trainer venv."""
    folder = BUILD / "models" / "smollm2-tokenizer"
    if not (folder / "tokenizer.json").is_file():
        run_script(Path(sys.executable), "save_tokenizer.py", str(smollm2_gguf()), str(folder))
    return folder


@pytest.fixture(scope="session")
def scribe_url(small_judge_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "SCRIBE_JUDGE_URL": small_judge_url,
        "SCRIBE_JUDGE_MODEL": "smollm2-135m",
        "SCRIBE_JUDGE_DIALECT": "json_object",
    }
    with scribe_server(tmp_path_factory.mktemp("scribe") / "serve.log", env) as url:
        yield url
