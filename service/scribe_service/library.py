"""The skill-prototype library: TOML files validated into `Prototype` objects at start-up.

A prototype is the paper's unit of mid-level supervision: when the skill applies, what
correct execution looks like, a descriptor for each score level 0-3, and the failure modes
that cap a step's score. Exemplars are subgoal phrasings; only they are embedded for routing.

The library is data. Loading fails fast with an error that names the file and the field, and
`version` is a content hash over every file (prototypes and judge templates), so a reward
can always be traced to the exact rubric text that produced it.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scribe_service.pipeline.checks import CHECKS

LEVELS = ("0", "1", "2", "3")
TEMPLATE_NAMES = (
    "judge_system.txt",
    "judge_user.txt",
    # Logprob mode: the same rubric, answered with the score digit alone.
    "judge_system_logprob.txt",
    "judge_user_logprob.txt",
)
_ID = r"^[a-z][a-z0-9_]*$"

Domain = Literal["math", "tool_use", "search_qa", "general"]


Signal = Literal["final_answer", "tool_call"]


class LibraryError(Exception):
    """The prototype library cannot be loaded; the message names the file and field."""


class FailureMode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ID)
    description: str = Field(min_length=10)
    max_score: int = Field(
        ge=0, le=2, description="A step showing this failure scores at most this."
    )


class Prototype(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ID)
    name: str = Field(min_length=3)
    domain: Domain
    fallback: bool = False
    usage_context: str = Field(min_length=20)
    reasoning_pattern: str = Field(min_length=40)
    levels: dict[str, str]
    failure_modes: tuple[FailureMode, ...] = Field(min_length=1)
    exemplars: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    """Deterministic checks run on every step routed here (`pipeline/checks.py`)."""
    requires: tuple[Signal, ...] = ()
    """What a step must show to be routed here (`retrieve.step_signals`): a rubric that grades
    a final answer cannot grade a step that states none, however close its subgoal reads."""

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, checks: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in checks if name not in CHECKS]
        if unknown:
            raise ValueError(f"unknown check {unknown[0]!r}; known: {', '.join(sorted(CHECKS))}")
        if len(checks) != len(set(checks)):
            raise ValueError(f"checks repeat: {list(checks)}")
        return checks

    @field_validator("levels")
    @classmethod
    def _four_levels(cls, levels: dict[str, str]) -> dict[str, str]:
        if sorted(levels) != list(LEVELS):
            raise ValueError(f"needs exactly the levels 0, 1, 2, 3 (got {sorted(levels)})")
        for level, text in levels.items():
            if len(text.strip()) < 10:
                raise ValueError(f"level {level} needs a descriptor")
        return {level: levels[level].strip() for level in LEVELS}

    @model_validator(mode="after")
    def _consistent(self) -> Prototype:
        ids = [mode.id for mode in self.failure_modes]
        if len(ids) != len(set(ids)):
            raise ValueError(f"failure mode ids repeat: {ids}")
        phrasings = [e.strip() for e in self.exemplars]
        if any(not e for e in phrasings) or len(set(phrasings)) != len(phrasings):
            raise ValueError("exemplars must be distinct and non-empty")
        if not self.fallback and len(phrasings) < 5:
            raise ValueError("a prototype needs at least 5 exemplars for routing")
        return self

    def failure_mode_ids(self) -> tuple[str, ...]:
        return tuple(mode.id for mode in self.failure_modes)


@dataclass(frozen=True)
class Library:
    prototypes: dict[str, Prototype]
    fallback: Prototype
    templates: dict[str, str]
    version: str

    def routable(self) -> list[Prototype]:
        """The prototypes retrieval can choose (the fallback is chosen by threshold only)."""
        return [p for p in self.prototypes.values() if not p.fallback]


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def load_prototype(path: Path) -> Prototype:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise LibraryError(f"{path}: not valid TOML: {exc}") from exc
    try:
        prototype = Prototype.model_validate(raw)
    except ValidationError as exc:
        raise LibraryError(f"{path}: {_describe(exc)}") from exc
    if prototype.id != path.stem:
        raise LibraryError(f"{path}: id: '{prototype.id}' must match the file name '{path.stem}'")
    return prototype


MANIFEST = "library.toml"
"""A built library's manifest (`scribe library build`): it lies beside the prototypes, is not one
of them, and does not enter the version (a rebuild of the same rubrics is the same library)."""


def load_library(directory: Path) -> Library:
    """Load and validate every `*.toml` prototype and the judge templates under `directory`."""
    if not directory.is_dir():
        raise LibraryError(f"{directory}: prototypes directory not found")
    files = sorted(p for p in directory.glob("*.toml") if p.name != MANIFEST)
    prototypes = {p.id: p for p in map(load_prototype, files)}
    fallbacks = [p for p in prototypes.values() if p.fallback]
    if len(fallbacks) != 1:
        raise LibraryError(
            f"{directory}: needs exactly one prototype with `fallback = true` "
            f"(found {len(fallbacks)})"
        )
    if len(prototypes) < 2:
        raise LibraryError(f"{directory}: no routable prototypes")
    templates = {}
    for name in TEMPLATE_NAMES:
        template = directory / "templates" / name
        if not template.is_file():
            raise LibraryError(f"{template}: judge template missing")
        templates[name] = template.read_text(encoding="utf-8")
    digest = hashlib.sha256()
    for path in [*files, *(directory / "templates" / n for n in TEMPLATE_NAMES)]:
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(b"\0")
        digest.update(re.sub(rb"\r\n", b"\n", path.read_bytes()))
        digest.update(b"\0")
    return Library(
        prototypes=prototypes,
        fallback=fallbacks[0],
        templates=templates,
        version=digest.hexdigest()[:16],
    )
