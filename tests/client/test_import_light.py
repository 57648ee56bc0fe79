"""The client stays light to import, and its public surface is exactly `__all__`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

import scribe_client
from support import ROOT

HEAVY_MODULES = [
    "faiss",
    "fastapi",
    "numpy",
    "openai",
    "sentence_transformers",
    "starlette",
    "torch",
    "uvicorn",
]

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(name for name in {heavy!r} if name in sys.modules)))
"""

# The trainer adapters run inside the trainer's process: they may add nothing heavy either.
LIGHT_MODULES = [
    "scribe_client",
    "scribe_adapters.trl",
    "scribe_adapters.verl",
    "scribe_adapters.openrlhf",
    "scribe_adapters.placement",
]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_import_pulls_in_nothing_heavy(module: str) -> None:
    # A fresh interpreter: this test process may already hold the service's dependencies.
    roots = [str(ROOT / "client"), str(ROOT / "training_adapter"), os.environ.get("PYTHONPATH")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, roots))}
    code = PROBE.format(module=module, heavy=HEAVY_MODULES)

    probe = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )

    assert json.loads(probe.stdout) == []


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(scribe_client).items()
        if not isinstance(value, types.ModuleType)
        and (not name.startswith("_") or name == "__version__")
    }

    assert scribe_client.__all__ == sorted(public)


def test_every_exported_name_resolves() -> None:
    for name in scribe_client.__all__:
        assert getattr(scribe_client, name) is not None, name
