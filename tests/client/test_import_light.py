"""The client stays light to import, and its public surface is exactly `__all__`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import scribe_client

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

PROBE = f"""
import json, sys
import scribe_client
print(json.dumps(sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules)))
"""


def test_import_pulls_in_nothing_heavy() -> None:
    # A fresh interpreter: this test process may already hold the service's dependencies.
    package_root = str(Path(scribe_client.__file__).parent.parent)
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    }

    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
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
