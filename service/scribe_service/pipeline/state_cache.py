"""A bounded RAM cache of llama.cpp model states for the embedded judge.

llama-cpp-python saves a model state after every completion and, on the next prompt, restores
the cached state sharing the longest token prefix, so a shared system prompt and rubric are
not evaluated again. Its own `LlamaRAMCache` charges an entry only `llama_state_size` (the KV
cells and one row of logits), but a `LlamaState` also holds `scores`: a copy of the model's
logits buffer for every evaluated token, n_tokens (up to n_batch) x vocabulary float32s. For
the bundled 1.5B judge (vocabulary 151,936) that is 0.6 MB per prompt token and up to 311 MB
per entry, against ~28 KB per token counted, so its "1 GiB" cache held many GB.

`StateCache` charges each entry what it really keeps alive (state bytes, `scores`,
`input_ids` and its key) and evicts the least recently used entries to stay within
`capacity_bytes`. A model loaded without `logits_all` never writes its logits buffer (the
sampler reads llama.cpp's logits directly), so the rows saved in `scores` are uninitialised
memory that nothing reads back; with `keep_logits=False` the cache keeps one row of zeros,
which `Llama.load_state` broadcasts over the rows it restores. That makes an entry cost about
its `llama_state_size` again, so the same budget holds hundreds of times more prefixes.

`Llama.save_state` also makes transient copies (the logits rows, the state twice) before the
cache sees the entry. glibc keeps freed heap chunks of that size resident, which measured as
up to twice the state's size again per entry; so after each store the cache asks glibc to
return free memory to the system (`malloc_trim`), and resident memory follows what is charged.

Duck-typed to llama-cpp-python's `BaseLlamaCache` interface (`cache_size`, `__getitem__`,
`__contains__`, `__setitem__`), so this module does not import llama_cpp.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.intc]


class ModelState(Protocol):
    """What the cache reads and trims of a `llama_cpp.llama.LlamaState`."""

    input_ids: npt.NDArray[np.intc]
    scores: npt.NDArray[np.single]
    n_tokens: int
    llama_state: bytes


@dataclass
class _Entry:
    tokens: Tokens
    state: ModelState
    size: int


def state_bytes(state: ModelState) -> int:
    """Bytes a cached state keeps alive: the llama.cpp state and both numpy arrays."""
    return sys.getsizeof(state.llama_state) + state.scores.nbytes + state.input_ids.nbytes


def common_prefix(a: Tokens, b: Tokens) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


class StateCache:
    """LRU cache of model states keyed by token sequence, bounded by the bytes entries hold.

    An entry larger than the whole capacity is not stored (storing it would evict everything,
    itself included). Not thread-safe: the embedded judge runs one completion at a time.
    """

    def __init__(self, capacity_bytes: int, *, keep_logits: bool = False) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.keep_logits = keep_logits
        # Keyed by the tokens' bytes (4 per token) rather than a tuple of Python ints (~40).
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._size = 0

    def __bool__(self) -> bool:
        # Llama tests `if self.cache:` before using it: an empty cache must still be used.
        return True

    @property
    def cache_size(self) -> int:
        """Bytes held by all entries, as charged."""
        return self._size

    @property
    def entries(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0
        release_free_memory()

    def _longest_prefix_key(self, tokens: Tokens) -> bytes | None:
        best, best_key = 0, None
        for key, entry in self._entries.items():
            length = common_prefix(entry.tokens, tokens)
            if length > best:
                best, best_key = length, key
        return best_key

    def __getitem__(self, key: Sequence[int]) -> ModelState:
        found = self._longest_prefix_key(_tokens(key))
        if found is None:
            raise KeyError("no cached state shares a prefix with these tokens")
        self._entries.move_to_end(found)
        return self._entries[found].state

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, Sequence):
            return False
        return self._longest_prefix_key(_tokens(key)) is not None

    def __setitem__(self, key: Sequence[int], state: ModelState) -> None:
        tokens = _tokens(key)
        raw = tokens.tobytes()
        if not self.keep_logits:
            # Never written without logits_all (see the module docstring); one row broadcasts.
            state.scores = np.zeros((min(1, len(state.scores)), *state.scores.shape[1:]), np.single)
        old = self._entries.pop(raw, None)
        if old is not None:
            self._size -= old.size
        # The key's bytes, plus a view of them as tokens (no copy) for prefix matching.
        stored = np.frombuffer(raw, dtype=np.intc)
        size = state_bytes(state) + sys.getsizeof(raw)
        if size > self.capacity_bytes:
            return
        self._entries[raw] = _Entry(stored, state, size)
        self._size += size
        while self._size > self.capacity_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._size -= evicted.size
        release_free_memory()


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return cast("Callable[[int], int] | None", trim)


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> None:
    """Return the C heap's free memory to the system, where the C library can (glibc)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _tokens(key: Sequence[int]) -> Tokens:
    return np.asarray(key, dtype=np.intc)
