"""Real trainer libraries, each in its own virtualenv under build/venvs, against a live service.

A trainer venv gets torch (the local CPU wheel, pinned first so pip never reaches for a CUDA
build), the trainer library, and scribe-reward installed *without extras*: the adapters must
work with what the trainer already has. Venvs are made once and reused while their recipe
is unchanged (build/ is git-ignored). The service is `scribe serve` in a subprocess (real
uvicorn, MiniLM, FAISS) judging with SmolLM2-135M behind llama.cpp's server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import ROOT, scribe_server, smollm2_gguf

BUILD = ROOT / "build"
SCRIPTS = Path(__file__).parent / "scripts"
TORCH = "torch==2.13.0"

# One `pip install` per line; the packages are those environment.md §8 found to work on CPU.
RECIPES: dict[str, list[list[str]]] = {
    "trl": [[TORCH, "trl==1.16.0", "gguf", "-e", str(ROOT)]],
    # verl's full requirements pull CUDA-only packages: install it alone, then what it imports
    # on the reward path, within verl's own version ranges.
    "verl": [
        ["--no-deps", "verl==0.9.1"],
        [
            TORCH, "packaging", "numpy", "ray", "tensordict!=0.9.0,<=0.10.0,>=0.8.0", "omegaconf",
            "transformers!=5.6.0,<5.11,>=5.5.3", "aiohttp", "codetiming", "orjson",
            "-e", str(ROOT),
        ],
    ],
    # openrlhf pins flash-attn (an sdist that needs CUDA to build): its reward client needs
    # only these.
    "openrlhf": [
        ["--no-deps", "openrlhf==0.11.2"],
        [TORCH, "aiohttp", "sympy", "pylatexenc", "transformers", "-e", str(ROOT)],
    ],
}  # fmt: skip


def ensure_venv(name: str) -> Path:
    """The python of build/venvs/<name>, created from its recipe unless already there."""
    folder = BUILD / "venvs" / name
    python = folder / "bin" / "python"
    stamp = folder / ".recipe.json"
    recipe = json.dumps(RECIPES[name])
    if stamp.is_file() and stamp.read_text() == recipe and python.exists():
        return python
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = folder.parent / f"{name}.log"
    started = time.monotonic()
    with log.open("w") as sink:
        commands = [[sys.executable, "-m", "venv", str(folder)]]
        commands += [[str(python), "-m", "pip", "install", "-q", *step] for step in RECIPES[name]]
        for command in commands:
            done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                tail = log.read_text()[-3000:]
                pytest.fail(f"creating the {name} venv failed ({' '.join(command)}):\n{tail}")
    stamp.write_text(recipe)
    print(f"\n{name} venv created in {time.monotonic() - started:.0f} s")
    return python


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
    return ensure_venv("trl")


@pytest.fixture(scope="session")
def verl_python() -> Path:
    return ensure_venv("verl")


@pytest.fixture(scope="session")
def openrlhf_python() -> Path:
    return ensure_venv("openrlhf")


@pytest.fixture(scope="session")
def smollm2_tokenizer(trl_python: Path) -> Path:
    """SmolLM2's Hugging Face tokenizer (chat template included), read from the bundled GGUF
    once; loading GGUF needs the `gguf` package, which the TRL venv has."""
    folder = BUILD / "models" / "smollm2-tokenizer"
    if not (folder / "tokenizer.json").is_file():
        run_script(trl_python, "save_tokenizer.py", str(smollm2_gguf()), str(folder))
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
