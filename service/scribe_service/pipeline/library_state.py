"""What the pipeline serves: one library and the routing index built from it, as one value.

The library can be swapped while the service runs (`reload.py`). Library and index must never
be mixed across versions (a route found in one library rendered with another's rubric, a
response naming a version it did not use), so they travel together in one frozen object: the
pipeline reads it once per request and passes it down, and a swap is one assignment. A
request that started on a version finishes on it. A router fitted for the library
(`router.py`) is part of its index, so it is swapped with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from scribe_service.library import Library
from scribe_service.pipeline.embed import Embedder
from scribe_service.pipeline.retrieve import PrototypeIndex
from scribe_service.pipeline.router import load_router

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LibraryState:
    library: Library
    index: PrototypeIndex

    @property
    def version(self) -> str:
        return self.library.version


def index_library(
    library: Library, embedder: Embedder, directory: Path | None = None
) -> LibraryState:
    """Embed every exemplar of `library` into a new index, routed by the router fitted for it
    in `directory` (where it was loaded from) if there is one. CPU-bound: run it off the loop.

    Raises `LibraryError` for a router that does not fit what is served."""
    router = None
    if directory is not None:
        router = load_router(directory, library, embedding_model=embedder.name, dim=embedder.dim)
    if router is not None:
        # The wire's routes cannot say what chose them: the log says it once per library.
        log.info("library %s routes with a fitted %s", library.version, router.describe())
    return LibraryState(library, PrototypeIndex(library, embedder, router))
