"""Stage 2a, fast path: the same sentence-transformers model run by ONNX Runtime (fp32 or int8).

sentence-transformers' own ONNX backend goes through optimum-onnx, whose releases pin
transformers < 4.58, below what the service runs; so the model is exported here instead, once,
with torch's exporter, from the packaged weights (no hub), into the export directory (by
default in the cache directory; `scribe embedder export` fills it ahead of time) under a key
made of the weights' and config's hashes: a new model or a new export recipe gets a new file,
and site-packages is never written. int8 is onnxruntime's dynamic quantization of that file.

Only the plain text-embedding layout is supported (a Transformer, mean pooling, an optional
Normalize, a fast tokenizer's `tokenizer.json`), which is what all-MiniLM-L6-v2 and its kin
are; anything else is refused with an `EmbeddingError` rather than embedded differently from
the torch path.

Serving needs neither torch nor transformers: the text is tokenized by `tokenizers` from the
model's `tokenizer.json` (the file transformers' fast tokenizer is built from), so once the
export is cached a start imports onnxruntime alone (transformers' import, which pulls in
torch, took 2.4 s of CPU). Texts are batched by token length (`plan_batches`), because a
batch costs its longest text times its size: sorted subgoals batched 64 at a time cost 2.5
times as much CPU per text as one at a time, nearly all of it padding.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from scribe_service.pipeline.embed import (
    EmbeddingError,
    Vectors,
    model_digest,
    resolve_model_path,
)
from scribe_service.settings import EMBEDDING_THREADS

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

# Part of the cache key: bump it when the export recipe changes, so old files are not reused.
EXPORT_RECIPE = "torchscript-opset17-v1"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_MISSING_EXTRA = (
    "the onnx embedding backends need onnxruntime, onnx and tokenizers (the `service` extra): "
    "pip install 'scribe-reward[service]' (or set SCRIBE_EMBEDDING_BACKEND=torch)"
)
EXPORT_DIR = "onnx-embedders"
"""The exports' folder in the cache directory, where SCRIBE_EMBEDDING_EXPORT_DIR names none."""
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LENGTH_SLACK = 0.9
"""A batch holds texts of at least this share of its longest one's tokens: at most a tenth
of its work is padding. Per text, a batch of 8 similar lengths and a batch of 1 cost the same
CPU here (onnxruntime's per-call overhead is small next to a 6-layer encoder), so nothing is
gained by mixing lengths to fill a batch."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EmbeddingError(f"cannot read {path}: {exc}") from exc


def check_layout(model_dir: Path) -> int:
    """The model's max sequence length, once its modules are known to be Transformer → mean
    pooling (→ Normalize): the pipeline this module reproduces."""
    modules = _read_json(model_dir / "modules.json")
    kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise EmbeddingError(
            f"{model_dir}: the onnx backends support Transformer → Pooling "
            f"(→ Normalize) models, this one is {kinds}"
        )
    pooling_dir = model_dir / modules[1].get("path", "1_Pooling")
    pooling = _read_json(pooling_dir / "config.json")
    mean = pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode") == "mean"
    if not mean:
        raise EmbeddingError(f"{model_dir}: the onnx backends support mean pooling only")
    config = model_dir / "sentence_bert_config.json"
    max_len = _read_json(config).get("max_seq_length") if config.exists() else None
    return int(max_len or 512)


def model_key(model_dir: Path) -> str:
    """A hash of what decides the exported graph: the weights, the config and the recipe."""
    digest = hashlib.sha256(EXPORT_RECIPE.encode())
    weights = next((model_dir / n for n in _WEIGHT_FILES if (model_dir / n).exists()), None)
    if weights is None:
        raise EmbeddingError(f"{model_dir} holds none of {', '.join(_WEIGHT_FILES)}")
    for path in (weights, model_dir / "config.json"):
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:20]


def _write_atomically(target: Path, write: Any) -> None:
    # Another worker may be exporting the same model: each writes its own temporary file and
    # the rename makes the last one win, with the same content.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp's 0600 would keep the file from a replica running as another user (an
        # image exported at build time, a shared volume): it holds public weights.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _export_fp32(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    class _LastHiddenState(torch.nn.Module):
        # Keyword arguments: BertModel's positional order changed across transformers releases.
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = _LastHiddenState(AutoModel.from_pretrained(str(model_dir))).eval()
    sample = tokenizer(["a", "two words"], padding=True, return_tensors="pt")
    if "token_type_ids" not in sample:
        raise EmbeddingError(f"{model_dir}: the onnx backends need a BERT-style tokenizer")
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUT_NAMES, "last_hidden_state")}
    # The tracer warns about every Python branch it freezes; for an encoder without a KV cache
    # none of them depends on the shapes, and the parity test checks the result.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(sample[name] for name in INPUT_NAMES),
            str(out),
            input_names=list(INPUT_NAMES),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _quantize(source: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True)


def onnx_model_file(model_dir: Path, export_dir: Path, *, quantized: bool) -> Path:
    """The model's ONNX file (int8 when `quantized`), exported into `export_dir` on first use."""
    folder = export_dir / model_key(model_dir)
    fp32 = folder / "model.onnx"
    try:
        if not fp32.exists():
            _write_atomically(fp32, lambda tmp: _export_fp32(model_dir, tmp))
        if not quantized:
            return fp32
        int8 = folder / "model_int8.onnx"
        if not int8.exists():
            _write_atomically(int8, lambda tmp: _quantize(fp32, tmp))
        return int8
    except EmbeddingError:
        raise
    except Exception as exc:  # an exporter failure means one thing to the operator
        raise EmbeddingError(f"cannot export {model_dir} to ONNX: {exc}") from exc


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise EmbeddingError(
        f"onnxruntime here cannot run on {device!r} (providers: "
        f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use "
        "SCRIBE_EMBEDDING_BACKEND=torch"
    )


class OnnxEmbedder:
    """A sentence-transformers model (Transformer → mean pooling) run by ONNX Runtime, int8
    when `quantized`, from the export in `export_dir` (default: `cache_dir`/onnx-embedders).
    Each encode's batches run on a pool of `threads` workers shared by every caller, each
    batch on one onnxruntime thread (settings.EMBEDDING_THREADS says why)."""

    def __init__(
        self,
        name: str,
        *,
        cache_dir: Path,
        export_dir: Path | None = None,
        quantized: bool = False,
        batch_size: int = 64,
        device: str = "cpu",
        threads: int = EMBEDDING_THREADS,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbeddingError(_MISSING_EXTRA) from exc
        model_dir = Path(resolve_model_path(name))
        self._tokenizer = load_tokenizer(model_dir, check_layout(model_dir))
        exports = cache_dir / EXPORT_DIR if export_dir is None else export_dir
        self.file = onnx_model_file(model_dir, exports, quantized=quantized)
        kind = "onnx-int8" if quantized else "onnx"
        self.fingerprint: str | None = f"{kind}:{EXPORT_RECIPE}:{device}:{model_digest(model_dir)}"
        """What decides the vectors, for stores that keep them."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # Spinning threads burn the cores the event loop and the other encodes need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(self.file), options, providers=_providers(device)
            )
        except EmbeddingError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"cannot load {self.file}: {exc}") from exc
        self.name = name
        self.dim = int(_read_json(model_dir / "config.json")["hidden_size"])
        self._batch_size = batch_size
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="onnx-encode")
        # Its idle workers would outlive a dropped embedder (a reload, a test) otherwise.
        weakref.finalize(self, self._pool.shutdown, wait=False)

    def _encode_batch(self, encodings: Sequence[Encoding]) -> Vectors:
        feed = pad(encodings)
        (output,) = self._session.run(["last_hidden_state"], feed)
        hidden: Vectors = np.asarray(output, dtype=np.float32)
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        vectors: Vectors = (pooled / norms).astype(np.float32)
        return vectors

    def encode(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        batches = plan_batches([len(e.ids) for e in encodings], self._batch_size)
        runs = [self._pool.submit(self._encode_batch, [encodings[i] for i in b]) for b in batches]
        for rows, run in zip(batches, runs, strict=True):
            out[rows] = run.result()
        return out


def load_tokenizer(model_dir: Path, max_length: int) -> Tokenizer:
    """The model's fast tokenizer, truncating at `max_length` tokens and padding nothing
    (`pad` does that per batch): what transformers' tokenizer does with `truncation=True,
    max_length=max_length`, whatever padding `tokenizer.json` itself asks for."""
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise EmbeddingError(f"{model_dir}: the onnx backends need a fast tokenizer's {path.name}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the file is the model's: any parse failure means one thing
        raise EmbeddingError(f"cannot read {path}: {exc}") from exc
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Rows grouped for encoding: longest first, each batch at most `batch_size` rows whose
    lengths are at least `LENGTH_SLACK` of its first (longest) one's."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for row in order:
        current = batches[-1] if batches else None
        if (
            current is None
            or len(current) >= batch_size
            or lengths[row] < LENGTH_SLACK * lengths[current[0]]
        ):
            batches.append([row])
        else:
            current.append(row)
    return batches


def pad(encodings: Sequence[Encoding]) -> dict[str, npt.NDArray[np.int64]]:
    """The model's inputs for one batch, right-padded with zeros to its longest row. The
    padding is masked out of attention and of the mean, so its ids change no real row."""
    width = max(len(e.ids) for e in encodings)
    feed = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in INPUT_NAMES}
    for row, encoding in enumerate(encodings):
        size = len(encoding.ids)
        feed["input_ids"][row, :size] = encoding.ids
        feed["attention_mask"][row, :size] = encoding.attention_mask
        feed["token_type_ids"][row, :size] = encoding.type_ids
    return feed
