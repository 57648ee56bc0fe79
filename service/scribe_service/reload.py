"""Swapping the served library while the service runs (`POST /v1/admin/reload`, SIGHUP).

During training the library grows (`scribe library refresh`), and restarting the service
would drop the requests in flight and reload the models. A reload instead loads and validates
the new directory and embeds its exemplars into a new index off the event loop, while the old
library keeps serving, then swaps `Pipeline.state` in one assignment
(`pipeline/library_state.py`). A request reads that state once, so it finishes on the version
it started with, and its response names that version.

* A directory that does not load is refused with `LibraryError`'s message, which names the
  file and the field; nothing is swapped.
* Reloads are serialised by a lock: two at once cannot interleave their swaps, and the second
  sees the first's result as "previous".
* A directory whose version (a content hash) equals the serving one is not indexed again, and
  exemplars whose vectors are in the on-disk store (`pipeline/embed_store.py`: written at
  start and by every reload) are read, not encoded: swapping back to an earlier library, or
  to a refresh that kept its exemplars, calls no model.
* With no directory given, the one serving now is read again, so SIGHUP after a refresh
  rewrote it in place picks the change up (and never reverts a directory swapped in by HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, Request

from scribe_client.protocol import ReloadResponse
from scribe_service.errors import InvalidLibraryError, ServiceError
from scribe_service.library import LibraryError, load_library
from scribe_service.library_build.router_fit import ROUTER_JSON
from scribe_service.metrics import Metrics
from scribe_service.pipeline.embed import Embedder, Vectors
from scribe_service.pipeline.embed_batch import CoalescingEmbedder
from scribe_service.pipeline.embed_cache import CachedEmbedder
from scribe_service.pipeline.embed_store import Fingerprinted, stored
from scribe_service.pipeline.library_state import LibraryState, index_library
from scribe_service.pipeline.run import Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reloaded:
    previous: LibraryState
    current: LibraryState
    directory: Path

    def response(self) -> ReloadResponse:
        return ReloadResponse(
            library_version=self.current.version,
            previous_version=self.previous.version,
            changed=self.current.version != self.previous.version,
            prototypes_dir=str(self.directory),
            prototypes=len(self.current.library.prototypes),
            exemplars=self.current.index.size,
        )


INDEX_CHUNK = 32
"""Exemplars encoded per model call while reindexing: requests' subgoals share the model
(its encode is serialised), and wait at most one chunk instead of the whole library."""


class _InChunks:
    """The serving embedder, called in small chunks that let requests' encodes in between."""

    def __init__(self, embedder: Embedder, chunk: int = INDEX_CHUNK) -> None:
        self.name = embedder.name
        self.dim = embedder.dim
        # Chunking changes no vector: the store may key them by the model's fingerprint.
        self.fingerprint = embedder.fingerprint if isinstance(embedder, Fingerprinted) else None
        self._embedder = embedder
        self._chunk = chunk

    def encode(self, texts: Sequence[str]) -> Vectors:
        parts = []
        for start in range(0, len(texts), self._chunk):
            parts.append(self._embedder.encode(texts[start : start + self._chunk]))
            time.sleep(0)  # a request blocked on the model's lock gets it before the next chunk
        return np.concatenate(parts) if parts else self._embedder.encode(texts)


def _index_embedder(embedder: Embedder, cache_dir: Path | None) -> Embedder:
    # Exemplars are encoded once per reload; in the subgoal cache they would only crowd out
    # the subgoals it exists for.
    # Nor should they wait on the batching window meant for concurrent requests' subgoals.
    while isinstance(embedder, CachedEmbedder | CoalescingEmbedder):
        embedder = embedder.inner
    chunked = _InChunks(embedder)
    return chunked if cache_dir is None else stored(chunked, cache_dir)


class LibraryReloader:
    """Reloads `pipeline`'s library from `directory` (the serving one) or another one.

    `on_swap` is told each newly served state (the score log learns its domains).
    `cache_dir`: the cache directory whose exemplar store indexing reads and writes, as
    the start's does (None: every exemplar is encoded, as for an injected embedder)."""

    def __init__(
        self,
        pipeline: Pipeline,
        directory: Path,
        *,
        metrics: Metrics,
        on_swap: Sequence[Callable[[LibraryState], None]] = (),
        cache_dir: Path | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._cache_dir = cache_dir
        self.directory = directory
        self._metrics = metrics
        self._on_swap = tuple(on_swap)
        self._lock = asyncio.Lock()

    async def reload(self, directory: Path | None = None) -> Reloaded:
        """Swap in the library at `directory` (default: the serving one), or raise
        `InvalidLibraryError` (it does not load) or a 500 `ServiceError` (indexing failed);
        on an error the serving library is untouched."""
        async with self._lock:
            target = self.directory if directory is None else directory
            previous = self.pipeline.state
            state = await self._load(target, previous)
            self.pipeline.state = state
            self.directory = target
            for notify in self._on_swap:
                notify(state)
            changed = state.version != previous.version
            self._metrics.library_reloads.labels("ok" if changed else "unchanged").inc()
            log.info(
                "library reloaded from %s: version %s (was %s), %d prototypes, %d exemplars",
                target,
                state.version,
                previous.version,
                len(state.library.prototypes),
                state.index.size,
            )
            return Reloaded(previous, state, target)

    async def _load(self, directory: Path, previous: LibraryState) -> LibraryState:
        try:
            library = await asyncio.to_thread(load_library, directory)
        except LibraryError as exc:
            self._metrics.library_reloads.labels("invalid").inc()
            raise InvalidLibraryError(
                f"library not reloaded, version {previous.version} keeps serving: {exc}"
            ) from exc
        # A router is no part of the version: one fitted (or removed) since is a change too.
        router_file = (directory / ROUTER_JSON).is_file()
        if (
            library.version == previous.version
            and not router_file
            and previous.index.router is None
        ):
            return previous
        embedder = _index_embedder(self.pipeline.embedder, self._cache_dir)
        try:
            return await asyncio.to_thread(index_library, library, embedder, directory)
        except LibraryError as exc:  # the router beside it does not fit it
            self._metrics.library_reloads.labels("invalid").inc()
            raise InvalidLibraryError(
                f"library not reloaded, version {previous.version} keeps serving: {exc}"
            ) from exc
        except Exception as exc:
            self._metrics.library_reloads.labels("failed").inc()
            log.exception("indexing the library at %s failed", directory)
            raise ServiceError(
                500,
                f"library not reloaded, version {previous.version} keeps serving: indexing "
                f"{directory} failed ({type(exc).__name__})",
                type="reload_failed",
            ) from exc


@contextlib.asynccontextmanager
async def reload_on_sighup(reloader: LibraryReloader) -> AsyncIterator[bool]:
    """While inside, SIGHUP reloads the serving directory; yields whether it is installed.

    A signal handler needs the main thread of a Unix process; elsewhere (a server run in a
    test's thread) SIGHUP keeps its default meaning and only HTTP reloads."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = loop.create_task(_reload_logged(reloader), name="library-reload")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (AttributeError, NotImplementedError, RuntimeError, ValueError) as exc:
        log.debug("SIGHUP does not reload the library here: %s", exc)
        yield False
        return
    try:
        yield True
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _reload_logged(reloader: LibraryReloader) -> None:
    # No caller to answer: the outcome goes to the log (and the reload counter).
    log.info("SIGHUP: reloading the library from %s", reloader.directory)
    try:
        await reloader.reload()
    except ServiceError as exc:
        log.error("SIGHUP: %s", exc)


def get_reloader(request: Request) -> LibraryReloader:
    reloader: LibraryReloader = request.app.state.reloader
    return reloader


ReloaderDep = Annotated[LibraryReloader, Depends(get_reloader)]
