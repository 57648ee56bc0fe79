"""What the pipeline serves: one library and the routing index built from it, as one value.

The library can be swapped while the service runs (`reload.py`). Library and index must never
be mixed across versions (a route found in one library rendered with another's rubric, a
response naming a version it did not use), so they travel together in one frozen object: the
pipeline reads it once per request and passes it down, and a swap is one assignment. A
request that started on a version finishes on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from scribe_service.library import Library
from scribe_service.pipeline.embed import Embedder
from scribe_service.pipeline.retrieve import PrototypeIndex


@dataclass(frozen=True)
class LibraryState:
    library: Library
    index: PrototypeIndex

    @property
    def version(self) -> str:
        return self.library.version


def index_library(library: Library, embedder: Embedder) -> LibraryState:
    """Embed every exemplar of `library` into a new index. CPU-bound: run it off the loop."""
    return LibraryState(library, PrototypeIndex(library, embedder))
