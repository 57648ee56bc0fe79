from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from scribe_service.pipeline.embed import Vectors
from scribe_service.pipeline.embed_cache import CachedEmbedder
from support import FakeEmbedder


class CountingEmbedder(FakeEmbedder):
    """Records every batch the model is asked to encode."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> Vectors:
        self.batches.append(list(texts))
        return super().encode(texts)


def _expected(texts: Sequence[str]) -> Vectors:
    return FakeEmbedder().encode(texts)


def test_mixed_hits_and_misses_come_back_in_input_order() -> None:
    model = CountingEmbedder()
    cached = CachedEmbedder(model, 100)
    cached.encode(["search the film", "state the answer"])
    texts = ["compute the sum", "state the answer", "check units", "search the film"]
    vectors = cached.encode(texts)
    np.testing.assert_array_equal(vectors, _expected(texts))
    assert model.batches[-1] == ["compute the sum", "check units"]  # the misses only, one call
    assert vectors.dtype == np.float32 and vectors.shape == (4, model.dim)


def test_a_second_encode_of_the_same_texts_calls_no_model() -> None:
    model = CountingEmbedder()
    counts: list[tuple[int, int]] = []
    cached = CachedEmbedder(
        model, 100, on_lookup=lambda hits, misses: counts.append((hits, misses))
    )
    texts = ["a b", "c d", "a b"]
    first = cached.encode(texts)
    assert model.batches == [["a b", "c d"]]  # a repeat within one call is encoded once
    second = cached.encode(texts)
    assert len(model.batches) == 1
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(second, _expected(texts))
    assert counts == [(1, 2), (3, 0)]  # (not encoded, encoded)


def test_the_least_recently_used_text_is_evicted() -> None:
    model = CountingEmbedder()
    cached = CachedEmbedder(model, 2)
    cached.encode(["one", "two"])
    cached.encode(["one"])  # "two" is now the least recently used
    cached.encode(["three"])
    assert len(cached) == 2
    cached.encode(["one", "two", "three"])
    assert model.batches[-1] == ["two"]


def test_an_empty_call_returns_no_rows_and_calls_no_model() -> None:
    model = CountingEmbedder()
    vectors = CachedEmbedder(model, 10).encode([])
    assert vectors.shape == (0, model.dim) and model.batches == []


def test_a_cache_needs_room_for_one_entry() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CachedEmbedder(FakeEmbedder(), 0)


def _word(number: int) -> str:
    # FakeEmbedder reads letters only: spell the digits.
    return "".join(chr(ord("a") + int(digit)) for digit in str(number))


def test_concurrent_threads_get_their_own_rows() -> None:
    cached = CachedEmbedder(CountingEmbedder(), 50)
    batches = [[f"{_word((i + j) % 30)} x{_word(j)}" for j in range(10)] for i in range(40)]
    assert len({tuple(map(tuple, _expected(b))) for b in batches}) > 1  # rows really differ
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(cached.encode, batches))
    for texts, vectors in zip(batches, results, strict=True):
        np.testing.assert_array_equal(vectors, _expected(texts))
    assert len(cached) <= 50
