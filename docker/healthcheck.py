"""The image's HEALTHCHECK: exit 0 when the service's /readyz answers 200, else 1.

/readyz sits behind the API key when one is set, so the key is sent as the trainers send it.
The image has no curl; the standard library is enough.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("SCRIBE_PORT") or "8000"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/readyz")
    if key := os.environ.get("SCRIBE_API_KEY"):
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=8) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"not ready: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
