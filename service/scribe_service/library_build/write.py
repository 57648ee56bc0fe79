"""Stage 5: the built library on disk, written so a person can review every draft.

One TOML file per prototype, in the hand-written files' layout (multi-line rubric text stays
multi-line); the judge templates and the fallback copied from the base library, so the
directory serves as it is; `library.toml`, the manifest (format version, the input's sha256,
the build parameters, the judge model, the library version); and the build report
(`build-report.json` for programs, `build-report.md` for the reviewer).

The rendering functions are pure; `write_library` does the I/O, into a temporary sibling
directory renamed into place at the end, so a half-written library is never seen at `out`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scribe_service.library import LEVELS, MANIFEST, Prototype
from scribe_service.library_build.errors import BuildError

MANIFEST_FORMAT = 1
REPORT_JSON = "build-report.json"
REPORT_MD = "build-report.md"


def toml_string(text: str) -> str:
    """`text` as a TOML string: a multi-line basic string when it has line breaks."""
    if "\n" not in text:
        # JSON string escapes are a subset of TOML's basic-string escapes.
        return json.dumps(text, ensure_ascii=False)
    escaped = []
    for char in text:
        if char == "\\":
            escaped.append("\\\\")
        elif char == '"':
            escaped.append('\\"')  # also keeps any run of three quotes from closing the string
        elif char != "\n" and (ord(char) < 0x20 or ord(char) == 0x7F):
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"""\n' + "".join(escaped) + '"""'


def _array(items: Sequence[str], *, one_per_line: bool) -> str:
    if not one_per_line or not items:
        return "[" + ", ".join(toml_string(i) for i in items) + "]"
    return "[\n" + "".join(f"  {toml_string(i)},\n" for i in items) + "]"


def prototype_toml(prototype: Prototype) -> str:
    """A prototype's file, in the layout of the hand-written ones; `load_prototype` reads it
    back to an equal prototype."""
    lines = [
        f"id = {toml_string(prototype.id)}",
        f"name = {toml_string(prototype.name)}",
        f"domain = {toml_string(prototype.domain)}",
    ]
    if prototype.checks:
        lines.append(f"checks = {_array(prototype.checks, one_per_line=False)}")
    if prototype.requires:
        lines.append(f"requires = {_array(prototype.requires, one_per_line=False)}")
    if prototype.fallback:
        lines.append("fallback = true")
    lines += [
        f"usage_context = {toml_string(prototype.usage_context)}",
        f"reasoning_pattern = {toml_string(prototype.reasoning_pattern)}",
        f"exemplars = {_array(prototype.exemplars, one_per_line=True)}",
        "",
        "[levels]",
        *(f"{level} = {toml_string(prototype.levels[level])}" for level in reversed(LEVELS)),
    ]
    for mode in prototype.failure_modes:
        lines += [
            "",
            "[[failure_modes]]",
            f"id = {toml_string(mode.id)}",
            f"description = {toml_string(mode.description)}",
            f"max_score = {mode.max_score}",
        ]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        pairs = (f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(pairs) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def manifest_toml(
    *,
    library_version: str,
    data: str,
    data_sha256: str,
    judge_model: str,
    embedding_model: str,
    parameters: Mapping[str, Any],
    built: Sequence[str],
    extended: Sequence[str],
    base: str,
) -> str:
    """The manifest. `None` parameters are left out (TOML has no null)."""
    lines = [
        "# Written by `scribe library build`; not a prototype (load_library skips this file).",
        f"format = {MANIFEST_FORMAT}",
        f"library_version = {toml_string(library_version)}",
        f"data = {toml_string(data)}",
        f"data_sha256 = {toml_string(data_sha256)}",
        f"judge_model = {toml_string(judge_model)}",
        f"embedding_model = {toml_string(embedding_model)}",
        f"base = {toml_string(base)}",
        f"built = {_toml_value(list(built))}",
        f"extended = {_toml_value(list(extended))}",
        "",
        "[parameters]",
        *(
            f"{key} = {_toml_value(value)}"
            for key, value in parameters.items()
            if value is not None
        ),
    ]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def report_markdown(report: Mapping[str, Any]) -> str:
    """The reviewer's report, from the same dict as `build-report.json`."""
    coverage = report["coverage"]
    lines = [
        f"# Library build: {report['data']}",
        "",
        f"- records: {report['records']}, steps: {report['steps']}, "
        f"distinct subgoals: {report['subgoals']}",
        f"- clusters kept: {len(report['clusters'])}, absorbed small groups: "
        f"{len(report['absorbed'])}, dropped: {len(report['dropped'])}",
        f"- prototypes built: {len(report['built'])}, base prototypes extended: "
        f"{len(report['extended'])}, clusters that failed to distil: {len(report['failed'])}",
        f"- coverage (steps routed to a non-fallback prototype): before "
        f"{_pct(coverage['before'])} ({coverage['before_library']}), after "
        f"{_pct(coverage['after'])}",
        f"- judge: {report['judge_model']}; time: {report['seconds']:.1f} s",
    ]
    if (written := report.get("llm_subgoals")) is not None:
        lines.append(
            f"- LLM subgoals: {written['rewritten']} of {written['asked']} derived subgoals "
            f"rewritten, {written['kept_on_failure']} kept on failure ({written['calls']} calls)"
        )
    lines += [
        "",
        "## Clusters",
        "",
        "| cluster | subgoals | steps | labels +1/0/-1 | outcome | example members |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for item in report["clusters"]:
        labels = item["labels"]
        examples = "<br>".join(_cell(e) for e in item["examples"])
        lines.append(
            f"| {item['key']} | {item['subgoals']} | {item['steps']} | "
            f"{labels['1']}/{labels['0']}/{labels['-1']} | {_cell(item['outcome'])} | {examples} |"
        )
    if report["absorbed"]:
        lines += ["", "## Small groups absorbed into a kept cluster", ""]
        for item in report["absorbed"]:
            lines.append(
                f"- {item['subgoals']} subgoal(s) into {item['into']} (sim {item['similarity']}): "
                + "; ".join(map(_cell, item["examples"]))
            )
    if report["dropped"]:
        lines += ["", "## Dropped (too small to generalise)", ""]
        for item in report["dropped"]:
            lines.append(
                f"- {item['subgoals']} subgoal(s): " + "; ".join(map(_cell, item["examples"]))
            )
    if report["failed"]:
        lines += ["", "## Clusters that gave no valid prototype", ""]
        for item in report["failed"]:
            lines.append(f"- {item['key']} after {item['attempts']} attempt(s):")
            lines += [f"  - {_cell(error)}" for error in item["errors"]]
    return "\n".join(lines) + "\n"


def _cell(text: str, limit: int = 120) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stage_library(
    out: Path,
    *,
    prototypes: Sequence[Prototype],
    copied: Mapping[str, Path],
    templates: Path,
) -> Path:
    """Write the library's prototypes and templates into a new staging directory beside `out`
    (which must not exist: a build never overwrites a library) and return it.

    `prototypes` are rendered; `copied` (file name → source) are copied byte for byte: base
    prototypes the build left alone keep their author's comments and layout. The staging
    directory loads as a library before the manifest is written, so the manifest can name
    the version the service will report."""
    if out.exists():
        raise BuildError(f"{out}: already exists; a build writes a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(templates, staging / "templates")
        for name, source in copied.items():
            shutil.copyfile(source, staging / name)
        for prototype in prototypes:
            (staging / f"{prototype.id}.toml").write_text(prototype_toml(prototype), "utf-8")
    except BaseException:
        discard(staging)
        raise
    return staging


def publish(staging: Path, out: Path, *, manifest: str, report: Mapping[str, Any]) -> None:
    """Add the manifest and the report, then move the staged library to `out` in one rename."""
    (staging / MANIFEST).write_text(manifest, "utf-8")
    (staging / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    (staging / REPORT_MD).write_text(report_markdown(report), "utf-8")
    os.replace(staging, out)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
