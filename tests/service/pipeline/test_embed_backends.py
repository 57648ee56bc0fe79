from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from pydantic import ValidationError

from scribe_service import cli
from scribe_service.app import build_pipeline, configured_embedder
from scribe_service.pipeline.embed import (
    EmbeddingBackend,
    EmbeddingError,
    SentenceTransformerEmbedder,
    make_embedder,
    resolve_model_path,
)
from scribe_service.pipeline.embed_batch import CoalescingEmbedder
from scribe_service.pipeline.embed_cache import CachedEmbedder
from scribe_service.pipeline.embed_onnx import (
    EXPORT_DIR,
    OnnxEmbedder,
    check_layout,
    load_tokenizer,
    pad,
    plan_batches,
)
from scribe_service.settings import BUNDLED_EMBEDDER, EMBEDDING_THREADS, Settings

if TYPE_CHECKING:
    from tokenizers import Encoding

SUBGOALS = [
    "Search for the director of the 1979 film Alien",
    "Call get_weather with city: Paris",
    "Compute 3 * 17 and add the remainder",
    "State the final answer",
    "Verify that the retrieved passage names the film's director, and if it does not, "
    "reformulate the query with the release year and the lead actor's name",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scribe-cache")


@pytest.fixture
def export_dir() -> Path:
    """Where tests/conftest.py has every test's service export MiniLM: made once, shared."""
    return Path(os.environ["SCRIBE_EMBEDDING_EXPORT_DIR"])


def _files(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return SentenceTransformerEmbedder(BUNDLED_EMBEDDER).encode(SUBGOALS)


@pytest.mark.real
@pytest.mark.parametrize(
    ("backend", "min_cosine", "batch_tolerance"),
    [("onnx", 0.99, 1e-4), ("onnx-int8", 0.95, 0.05)],
)
def test_onnx_backends_load_from_the_package_and_match_torch(
    backend: EmbeddingBackend,
    min_cosine: float,
    batch_tolerance: float,
    cache_dir: Path,
    export_dir: Path,
    torch_vectors: np.ndarray,
) -> None:
    embedder = make_embedder(
        BUNDLED_EMBEDDER, backend=backend, cache_dir=cache_dir, export_dir=export_dir
    )
    assert isinstance(embedder, OnnxEmbedder)
    assert embedder.file.is_relative_to(export_dir)  # the shared export, not cache_dir's
    vectors = embedder.encode(SUBGOALS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(SUBGOALS), embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * torch_vectors).sum(axis=1)
    assert cosines.min() >= min_cosine, cosines
    # Batched (and reordered by length) or one at a time: the same vectors. Not exactly for
    # int8: dynamic quantization scales activations by the range of the whole batch.
    alone = np.concatenate([embedder.encode([text]) for text in SUBGOALS])
    assert (1 - (alone * vectors).sum(axis=1)).max() <= batch_tolerance
    if backend == "onnx":
        np.testing.assert_allclose(alone, vectors, atol=1e-4)


@pytest.mark.real
def test_the_export_is_reused_not_redone(cache_dir: Path, export_dir: Path) -> None:
    first = OnnxEmbedder(BUNDLED_EMBEDDER, cache_dir=cache_dir, export_dir=export_dir)
    written = first.file.stat().st_mtime_ns
    again = OnnxEmbedder(BUNDLED_EMBEDDER, cache_dir=cache_dir, export_dir=export_dir)
    assert again.file == first.file and again.file.stat().st_mtime_ns == written
    assert not list(first.file.parent.glob("*.tmp"))
    assert not (cache_dir / EXPORT_DIR).exists()  # nothing exported where it was not asked


@pytest.mark.real
def test_a_fresh_cache_dir_gets_its_own_export_and_site_packages_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset SCRIBE_EMBEDDING_EXPORT_DIR (as in production): the default settings export into
    the cache directory, and the model's package folder is left exactly as it was."""
    monkeypatch.delenv("SCRIBE_EMBEDDING_EXPORT_DIR")
    package = Path(resolve_model_path(BUNDLED_EMBEDDER))
    before = _files(package)
    settings = Settings(cache_dir=tmp_path / "cache")
    assert settings.embedding_backend == "onnx" and settings.embedding_export_dir is None
    embedder = configured_embedder(settings)
    assert isinstance(embedder, OnnxEmbedder) and embedder.file.name == "model.onnx"
    assert embedder.file.is_relative_to(tmp_path / "cache" / EXPORT_DIR)
    assert embedder.file.stat().st_size > 10_000_000  # MiniLM's weights, not a stub
    assert not list(embedder.file.parent.glob("*.tmp"))
    assert embedder.file.stat().st_mode & 0o777 == 0o644  # readable by replicas as other users
    assert _files(package) == before


@pytest.mark.real
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("backend", "file_name"), [(None, "model.onnx"), ("onnx-int8", "model_int8.onnx")]
)
async def test_the_settings_reach_the_embedder(
    backend: str | None,
    file_name: str,
    cache_dir: Path,
    export_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default backend (None: the variable unset), SCRIBE_EMBEDDING_EXPORT_DIR and
    SCRIBE_EMBEDDING_THREADS, through build_pipeline to the session onnxruntime runs."""
    if backend is not None:
        monkeypatch.setenv("SCRIBE_EMBEDDING_BACKEND", backend)
    monkeypatch.setenv("SCRIBE_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("SCRIBE_EMBEDDING_THREADS", "3")
    pipeline = await build_pipeline(Settings(), with_judge=False)
    cache = pipeline.embedder
    assert isinstance(cache, CachedEmbedder) and isinstance(cache.inner, CoalescingEmbedder)
    model = cache.inner.inner
    assert isinstance(model, OnnxEmbedder) and model.file.name == file_name
    assert model.file.is_relative_to(export_dir)
    assert model.threads == 3 and model._pool._max_workers == 3
    assert model._session.get_session_options().intra_op_num_threads == 1
    vectors = pipeline.embedder.encode(SUBGOALS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_onnx_fp32_on_two_threads_is_the_default() -> None:
    settings = Settings()
    assert settings.embedding_backend == "onnx"
    assert settings.embedding_threads == EMBEDDING_THREADS == 2


@pytest.mark.real
@pytest.mark.parametrize("threads", [1, 2])
def test_a_requests_batches_encode_at_once_up_to_threads(
    threads: int, cache_dir: Path, export_dir: Path
) -> None:
    model = OnnxEmbedder(
        BUNDLED_EMBEDDER, cache_dir=cache_dir, export_dir=export_dir, threads=threads
    )
    alone = np.stack([model.encode([text])[0] for text in SUBGOALS])
    running, peak, lock = 0, 0, threading.Lock()
    encode_batch = model._encode_batch

    def slow(encodings: Sequence[Encoding]) -> np.ndarray:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)  # long enough for the other worker to start its batch meanwhile
        try:
            return encode_batch(encodings)
        finally:
            with lock:
                running -= 1

    model._encode_batch = slow  # type: ignore[method-assign]
    assert len(plan_batches([len(e.ids) for e in model._tokenizer.encode_batch(SUBGOALS)], 64)) > 2
    together = model.encode(SUBGOALS)
    assert peak == threads
    np.testing.assert_allclose(together, alone, atol=1e-5)  # each row back in its place


@pytest.mark.real
def test_onnx_on_a_gpu_this_onnxruntime_lacks_is_an_embedding_error(
    cache_dir: Path, export_dir: Path
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime can run on CUDA")
    with pytest.raises(EmbeddingError, match="cuda"):
        OnnxEmbedder(BUNDLED_EMBEDDER, cache_dir=cache_dir, export_dir=export_dir, device="cuda")


@pytest.mark.real
def test_the_device_reaches_torch() -> None:
    import torch

    if torch.cuda.is_available():
        model = make_embedder(
            BUNDLED_EMBEDDER, backend="torch", device="cuda", cache_dir=Path("unused")
        )
        assert isinstance(model, SentenceTransformerEmbedder)
        assert model.encode(SUBGOALS[:1]).shape == (1, model.dim)
    else:  # a CPU-only torch refuses it, which shows the setting got through
        with pytest.raises(EmbeddingError, match="CUDA"):
            make_embedder(
                BUNDLED_EMBEDDER, backend="torch", device="cuda", cache_dir=Path("unused")
            )


def test_a_missing_onnxruntime_is_an_embedding_error_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(EmbeddingError, match=r"scribe-reward\[service\]"):
        make_embedder(BUNDLED_EMBEDDER, backend="onnx", cache_dir=tmp_path)


def test_an_unknown_backend_is_refused_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRIBE_EMBEDDING_BACKEND", "tensorrt")
    with pytest.raises(ValidationError, match="embedding_backend"):
        Settings()


def _model_dir(tmp_path: Path, modules: list[str], pooling: dict[str, object]) -> Path:
    (tmp_path / "1_Pooling").mkdir(parents=True)
    layout = [{"path": "" if i == 0 else f"{i}_{m}", "type": f"sentence_transformers.{m}"}
              for i, m in enumerate(modules)]  # fmt: skip
    (tmp_path / "modules.json").write_text(json.dumps(layout))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    return tmp_path


def test_the_layout_check_accepts_mean_pooling_only(tmp_path: Path) -> None:
    mean = {"pooling_mode_mean_tokens": True}
    assert check_layout(_model_dir(tmp_path / "a", ["Transformer", "Pooling"], mean)) == 128
    cls = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    with pytest.raises(EmbeddingError, match="mean pooling"):
        check_layout(_model_dir(tmp_path / "b", ["Transformer", "Pooling", "Normalize"], cls))
    with pytest.raises(EmbeddingError, match="Dense"):
        check_layout(_model_dir(tmp_path / "c", ["Transformer", "Pooling", "Dense"], mean))


@pytest.mark.parametrize(
    ("lengths", "batch_size", "batches"),
    [
        pytest.param([], 64, [], id="none"),
        pytest.param([5, 50, 48, 6, 46], 64, [[1, 2, 4], [3], [0]], id="similar-lengths-together"),
        pytest.param([10, 10, 10, 10, 10], 2, [[0, 1], [2, 3], [4]], id="batch-size-bounds"),
        pytest.param([100, 89, 90], 64, [[0, 2], [1]], id="under-the-slack-starts-a-batch"),
    ],
)
def test_texts_are_batched_by_token_length(
    lengths: list[int], batch_size: int, batches: list[list[int]]
) -> None:
    assert plan_batches(lengths, batch_size) == batches


def test_a_batch_is_right_padded_with_a_zero_mask() -> None:
    class Row:  # the three fields `pad` reads, as an Encoding has them
        def __init__(self, ids: list[int]) -> None:
            self.ids = ids
            self.attention_mask = [1] * len(ids)
            self.type_ids = [0] * len(ids)

    rows: list[Encoding] = [Row([101, 7, 102]), Row([101, 102])]  # type: ignore[list-item]
    feed = pad(rows)
    np.testing.assert_array_equal(feed["input_ids"], [[101, 7, 102], [101, 102, 0]])
    np.testing.assert_array_equal(feed["attention_mask"], [[1, 1, 1], [1, 1, 0]])
    assert feed["token_type_ids"].shape == (2, 3) and not feed["token_type_ids"].any()
    assert all(array.dtype == np.int64 for array in feed.values())


@pytest.mark.real
def test_the_tokenizer_gives_the_ids_transformers_gives() -> None:
    from transformers import AutoTokenizer

    model_dir = Path(resolve_model_path(BUNDLED_EMBEDDER))
    max_length = check_layout(model_dir)
    texts = [*SUBGOALS, "word " * 400, "Ünïcode   spacing\tand ÇASE", ""]
    reference = AutoTokenizer.from_pretrained(str(model_dir))
    expected = reference(texts, truncation=True, max_length=max_length)
    got = load_tokenizer(model_dir, max_length).encode_batch(texts)
    assert [e.ids for e in got] == expected["input_ids"]
    assert [e.type_ids for e in got] == expected["token_type_ids"]
    assert max(len(e.ids) for e in got) == max_length


@pytest.mark.real
def test_serving_from_a_cached_export_imports_neither_torch_nor_transformers(
    cache_dir: Path, export_dir: Path
) -> None:
    # Exports, if no test did yet.
    OnnxEmbedder(BUNDLED_EMBEDDER, cache_dir=cache_dir, export_dir=export_dir)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from scribe_service.pipeline.embed_onnx import OnnxEmbedder\n"
        "from scribe_service.settings import BUNDLED_EMBEDDER\n"
        f"OnnxEmbedder(BUNDLED_EMBEDDER, cache_dir=Path({str(cache_dir)!r}), "
        f"export_dir=Path({str(export_dir)!r})).encode(['a subgoal'])\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.real
@pytest.mark.anyio
async def test_after_scribe_embedder_export_a_start_encodes_no_exemplar(
    tmp_path: Path,
    export_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the image build runs: the export's path on stdout, and the library's exemplar
    vectors stored, so the next start loads the export and calls the model on nothing."""
    monkeypatch.setenv("SCRIBE_CACHE_DIR", str(tmp_path))
    assert cli.main(["embedder", "export"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.is_file() and printed.is_relative_to(export_dir)
    encoded: list[str] = []
    encode = OnnxEmbedder.encode

    def recorded(self: OnnxEmbedder, texts: Sequence[str]) -> np.ndarray:
        encoded.extend(texts)
        return encode(self, texts)

    monkeypatch.setattr(OnnxEmbedder, "encode", recorded)
    pipeline = await build_pipeline(Settings(), with_judge=False)
    assert encoded == [] and pipeline.index.size > 0
