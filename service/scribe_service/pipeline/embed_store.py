"""The library's exemplar vectors, kept on disk so a restart does not embed them again.

To build its routing index a start embeds every exemplar of the library (288 for the bundled
one): with torch on 2 busy cores that was about 12 s of CPU, most of a cold start. The
vectors are a function of the model's files, what runs it (backend, device) and the texts
alone, so a file is stored under a hash of exactly those: another model, backend or device, or
any changed exemplar, is another file, never a stale one. The library version is not part of
the key; two versions with the same exemplars share their vectors.

The store only ever saves time: a file that cannot be read or has the wrong shape is
recomputed and rewritten, and a cache directory that cannot be written is logged once per
start and the vectors are used from memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from scribe_service.pipeline.embed import Embedder, Vectors

log = logging.getLogger(__name__)

STORE_DIR = "exemplar-vectors"
KEEP_FILES = 16
"""Files kept in the store, the most recently used: a library of about 300 exemplars is
about 0.5 MB, and old library versions would otherwise pile up."""


@runtime_checkable
class Fingerprinted(Protocol):
    fingerprint: str | None
    """What decides the model's vectors; None where it cannot be known."""


def store_key(fingerprint: str, texts: Sequence[str]) -> str:
    """The file name of `texts`' vectors under the model `fingerprint`. Each text is
    length-prefixed, so no two different lists of texts hash the same bytes."""
    digest = hashlib.sha256(fingerprint.encode() + b"\0")
    for text in texts:
        data = text.encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:40]


def read_vectors(path: Path, rows: int, dim: int) -> Vectors | None:
    """The stored vectors, or None when the file is missing or not what was written."""
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if vectors.dtype != np.float32 or vectors.shape != (rows, dim):
        return None
    if not np.isfinite(vectors).all():
        return None
    stored: Vectors = vectors
    return stored


def write_vectors(path: Path, vectors: Vectors) -> None:
    # Another worker may be storing the same vectors: each writes its own temporary file and
    # the rename makes the last one win, with the same content.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, vectors, allow_pickle=False)
        os.chmod(tmp, 0o644)  # as the ONNX export: readable by replicas under other users
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def prune(directory: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used files."""
    files = sorted(directory.glob("*.npy"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


class StoredEmbedder:
    """An `Embedder` whose every call is looked up in, or added to, the store in `directory`
    as one file: meant for the one large call that indexes a library, not for subgoals."""

    def __init__(
        self, embedder: Embedder, directory: Path, fingerprint: str, *, keep: int = KEEP_FILES
    ) -> None:
        self.inner = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        self.directory = directory
        self.fingerprint = fingerprint
        self._keep = keep

    def encode(self, texts: Sequence[str]) -> Vectors:
        path = self.directory / f"{store_key(self.fingerprint, texts)}.npy"
        vectors = read_vectors(path, len(texts), self.dim)
        if vectors is not None:
            try:
                os.utime(path)  # used: the last to be pruned
            except OSError:
                pass
            return vectors
        vectors = self.inner.encode(texts)
        try:
            write_vectors(path, vectors)
            prune(self.directory, self._keep)
        except OSError as exc:
            log.warning("exemplar vectors not stored in %s: %s", self.directory, exc)
        return vectors


def stored(embedder: Embedder, cache_dir: Path) -> Embedder:
    """`embedder` behind the exemplar store in `cache_dir`, where its vectors can be keyed
    (it says what decides them); otherwise `embedder` itself."""
    fingerprint = embedder.fingerprint if isinstance(embedder, Fingerprinted) else None
    if fingerprint is None:
        return embedder
    return StoredEmbedder(embedder, cache_dir / STORE_DIR, fingerprint)
