from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from scribe_service.app import build_pipeline
from scribe_service.pipeline.embed import Vectors
from scribe_service.pipeline.embed_batch import CoalescingEmbedder
from scribe_service.pipeline.embed_cache import CachedEmbedder
from scribe_service.settings import Settings
from support import FakeEmbedder

# Long enough that threads started together all land in one window on a loaded 2-core box.
WINDOW = 0.5


class CountingEmbedder(FakeEmbedder):
    """Records every batch the model is asked to encode; raises `fail` when given."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    def encode(self, texts: Sequence[str]) -> Vectors:
        self.batches.append(list(texts))
        if self.fail is not None:
            raise self.fail
        return super().encode(texts)


def _concurrently(embedder: CoalescingEmbedder, calls: list[list[str]]) -> list[object]:
    """Each call from its own thread, all released at once; a result or the exception raised."""
    start = threading.Barrier(len(calls))

    def call(texts: list[str]) -> object:
        start.wait()
        try:
            return embedder.encode(texts)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(call, calls))


def test_concurrent_callers_share_one_encode_and_get_their_own_rows() -> None:
    model = CountingEmbedder()
    batcher = CoalescingEmbedder(model, window=WINDOW, max_batch=256)
    calls = [[f"search the film {i}", f"state answer {i}", "shared first step"] for i in range(8)]
    results = _concurrently(batcher, calls)
    assert len(model.batches) == 1
    assert sorted(model.batches[0]) == sorted({t for call in calls for t in call})  # deduplicated
    for texts, vectors in zip(calls, results, strict=True):
        np.testing.assert_array_equal(vectors, FakeEmbedder().encode(texts))


def test_an_encode_error_reaches_every_caller() -> None:
    error = RuntimeError("model on fire")
    batcher = CoalescingEmbedder(CountingEmbedder(fail=error), window=WINDOW, max_batch=256)
    results = _concurrently(batcher, [[f"text {i}"] for i in range(6)])
    assert results == [error] * 6


def test_a_full_batch_is_encoded_at_once_and_the_next_caller_starts_another() -> None:
    model = CountingEmbedder()
    # A window no test would wait out: a full batch must not wait for it.
    batcher = CoalescingEmbedder(model, window=60.0, max_batch=3)
    vectors = batcher.encode(["a b", "c d", "e f"])
    assert model.batches == [["a b", "c d", "e f"]]
    np.testing.assert_array_equal(vectors, FakeEmbedder().encode(["a b", "c d", "e f"]))
    big = [f"word{i}" for i in range(5)]  # more than max_batch from one caller: one batch anyway
    np.testing.assert_array_equal(batcher.encode(big), FakeEmbedder().encode(big))
    assert model.batches[-1] == big


def test_a_caller_that_would_overflow_the_open_batch_leads_a_new_one() -> None:
    model = CountingEmbedder()
    batcher = CoalescingEmbedder(model, window=WINDOW, max_batch=4)
    results = _concurrently(batcher, [["a", "b", "c"], ["d", "e", "f"]])
    assert sorted(len(batch) for batch in model.batches) == [3, 3]
    np.testing.assert_array_equal(results[1], FakeEmbedder().encode(["d", "e", "f"]))


def test_repeated_texts_in_one_call_come_back_in_every_row() -> None:
    model = CountingEmbedder()
    batcher = CoalescingEmbedder(model, window=0.001, max_batch=8)
    texts = ["same step", "other step", "same step"]
    np.testing.assert_array_equal(batcher.encode(texts), FakeEmbedder().encode(texts))
    assert model.batches == [["same step", "other step"]]
    assert batcher.encode([]).shape == (0, model.dim)


@pytest.mark.parametrize(("window", "max_batch"), [(0.0, 8), (0.01, 0)], ids=["window", "max"])
def test_a_batcher_needs_a_positive_window_and_size(window: float, max_batch: int) -> None:
    with pytest.raises(ValueError):
        CoalescingEmbedder(FakeEmbedder(), window=window, max_batch=max_batch)


@pytest.mark.parametrize(("window_ms", "coalesced"), [(2.0, True), (0.0, False)], ids=str)
@pytest.mark.anyio
async def test_build_pipeline_puts_the_batcher_under_the_cache(
    window_ms: float, coalesced: bool
) -> None:
    settings = Settings(embedding_batch_window_ms=window_ms)
    model = FakeEmbedder()
    pipeline = await build_pipeline(settings, embedder=model, with_judge=False)
    cache = pipeline.embedder
    assert isinstance(cache, CachedEmbedder)
    if coalesced:
        assert isinstance(cache.inner, CoalescingEmbedder) and cache.inner.inner is model
        assert cache.inner.window == pytest.approx(0.002)
    else:
        assert cache.inner is model


@pytest.mark.real
def test_coalesced_minilm_vectors_equal_one_call_each() -> None:
    from scribe_service.pipeline.embed import SentenceTransformerEmbedder
    from scribe_service.settings import BUNDLED_EMBEDDER

    minilm = SentenceTransformerEmbedder(BUNDLED_EMBEDDER)
    calls = [
        ["Search for the director of Alien", "Answer with the name"],
        ["Compute the derivative of x^2"],
        ["Call get_weather with city Paris", "Search for the director of Alien"],
    ]
    batcher = CoalescingEmbedder(minilm, window=WINDOW, max_batch=64)
    results = _concurrently(batcher, calls)
    for texts, vectors in zip(calls, results, strict=True):
        assert isinstance(vectors, np.ndarray)
        np.testing.assert_allclose(vectors, minilm.encode(texts), atol=1e-5)
