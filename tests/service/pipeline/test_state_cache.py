"""The embedded judge's state cache: what an entry is charged, LRU eviction, prefix lookup."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from scribe_service.pipeline.state_cache import StateCache, common_prefix, state_bytes

VOCAB = 1000
N_CTX = 256


@dataclass
class FakeState:
    """Shaped like llama_cpp's LlamaState as `Llama.save_state` makes it."""

    input_ids: npt.NDArray[np.intc]
    scores: npt.NDArray[np.single]
    n_tokens: int
    llama_state: bytes


def make_state(tokens: list[int], state_bytes_per_token: int = 100) -> FakeState:
    input_ids = np.zeros(N_CTX, dtype=np.intc)
    input_ids[: len(tokens)] = tokens
    return FakeState(
        input_ids=input_ids,
        scores=np.ones((len(tokens), VOCAB), dtype=np.single),
        n_tokens=len(tokens),
        llama_state=bytes(state_bytes_per_token * len(tokens)),
    )


def charged(state: FakeState, key: list[int]) -> int:
    return state_bytes(state) + sys.getsizeof(np.asarray(key, dtype=np.intc).tobytes())


def test_an_entry_is_charged_its_arrays_not_just_the_llama_state() -> None:
    cache = StateCache(1 << 30, keep_logits=True)
    key = list(range(1, 41))
    state = make_state(key)
    cache[key] = state
    assert state.scores.shape == (40, VOCAB)  # kept as saved
    expected = len(state.llama_state) + 40 * VOCAB * 4 + N_CTX * 4
    assert expected <= cache.cache_size <= expected + 1024  # object headers, the key
    assert cache.cache_size == charged(state, key)


def test_without_logits_all_one_row_of_scores_is_kept() -> None:
    cache = StateCache(1 << 30)
    key = list(range(1, 41))
    state = make_state(key)
    cache[key] = state
    assert state.scores.shape == (1, VOCAB) and not state.scores.any()
    assert cache.cache_size == charged(state, key) < 40 * VOCAB * 4
    # What Llama.load_state does with it: the one row fills every restored row.
    buffer = np.full((64, VOCAB), 7.0, dtype=np.single)
    buffer[: state.n_tokens, :] = cache[key].scores.copy()
    assert not buffer[:40].any() and (buffer[40:] == 7.0).all()


def test_least_recently_used_entries_are_evicted_to_stay_within_capacity() -> None:
    keys = [[k, *range(100, 130)] for k in (1, 2, 3)]
    one = charged(make_state(keys[0]), keys[0])
    cache = StateCache(2 * one + one // 2, keep_logits=True)
    cache[keys[0]] = make_state(keys[0])
    cache[keys[1]] = make_state(keys[1])
    assert cache.entries == 2
    cache[keys[0]]  # a lookup makes the first one the most recently used
    cache[keys[2]] = make_state(keys[2])
    assert cache.entries == 2 and cache.cache_size <= cache.capacity_bytes
    assert keys[1] not in cache
    assert cache[keys[0]].n_tokens == 31 and cache[keys[2]].input_ids[0] == 3


def test_many_insertions_never_exceed_capacity() -> None:
    cache = StateCache(200_000, keep_logits=True)
    for n in range(1, 60):
        key = [n] * (n % 13 + 1)
        cache[key] = make_state(key)
        assert cache.cache_size <= 200_000
        assert cache.cache_size == sum(e.size for e in cache._entries.values())
    assert 1 < cache.entries < 59


def test_storing_the_same_key_again_replaces_it() -> None:
    cache = StateCache(1 << 30)
    cache[[1, 2, 3]] = make_state([1, 2, 3])
    size = cache.cache_size
    cache[[1, 2, 3]] = make_state([1, 2, 3])
    assert cache.entries == 1 and cache.cache_size == size


def test_an_entry_larger_than_the_capacity_is_not_stored_and_evicts_nothing() -> None:
    small = [1, 2]
    cache = StateCache(charged(make_state(small), small) + 100, keep_logits=True)
    cache[small] = make_state(small)
    cache[list(range(3, 60))] = make_state(list(range(3, 60)))
    assert cache.entries == 1 and small in cache
    assert [3, 4] not in cache


def test_lookup_returns_the_state_sharing_the_longest_prefix() -> None:
    cache = StateCache(1 << 30)
    cache[[5, 6, 7, 8]] = make_state([5, 6, 7, 8])
    cache[[5, 6, 9]] = make_state([5, 6, 9])
    assert cache[[5, 6, 7, 1, 1]].n_tokens == 4
    assert cache[[5, 6, 9, 9]].n_tokens == 3
    assert [5] in cache
    assert [4, 5, 6] not in cache
    with pytest.raises(KeyError):
        cache[[4, 5, 6]]


def test_an_empty_cache_is_still_truthy() -> None:
    # llama-cpp-python skips a falsy cache altogether (`if self.cache:`).
    assert StateCache(1024)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        StateCache(0)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [([], [1], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2), ([1, 2], [1, 3], 1)],
    ids=["empty", "equal", "shorter", "diverging"],
)
def test_common_prefix(a: list[int], b: list[int], expected: int) -> None:
    assert common_prefix(np.asarray(a, np.intc), np.asarray(b, np.intc)) == expected
