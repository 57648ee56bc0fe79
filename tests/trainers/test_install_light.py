"""`pip install scribe-reward` without extras, in each trainer's venv, is enough for its
adapter, and brings in none of the service's dependencies."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

SERVICE_ONLY = ["faiss", "fastapi", "prometheus_client", "sentence_transformers", "uvicorn"]
PROBE = """
import importlib, importlib.util, json, sys
for module in sys.argv[1:]:
    importlib.import_module(module)
print(json.dumps({"installed": [m for m in SERVICE_ONLY if importlib.util.find_spec(m)],
                  "torch_loaded": "torch" in sys.modules}))
""".replace("SERVICE_ONLY", repr(SERVICE_ONLY))


@pytest.mark.parametrize(
    ("venv", "modules"),
    [
        ("trl_python", ["scribe_adapters.trl", "scribe_adapters.placement"]),
        ("verl_python", ["scribe_adapters.verl", "scribe_adapters.placement"]),
        ("openrlhf_python", ["scribe_adapters.openrlhf"]),
    ],
)
def test_adapters_need_no_extras(
    venv: str, modules: list[str], request: pytest.FixtureRequest
) -> None:
    python: Path = request.getfixturevalue(venv)
    done = subprocess.run(
        [str(python), "-c", PROBE, *modules], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == {"installed": [], "torch_loaded": False}
