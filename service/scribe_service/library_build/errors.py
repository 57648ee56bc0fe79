"""Why a build stopped. A cluster that cannot be distilled is not an error of the build: it is
reported (`distil.DistilFailure`) and the rest of the library is still written."""

from __future__ import annotations


class BuildError(Exception):
    """The build cannot go on: unusable input, options or output directory; the message says
    which."""
