"""Read labelled trajectory records (docs/records.md) into what the evaluation needs.

A record is one trajectory in OpenAI chat format with human labels keyed by the index of the
assistant message they judge. Reading validates every record and fails on the first bad one
with its line and field, because a silently skipped label changes every number downstream.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from scribe_client.protocol import ScoreRequest
from scribe_client.reference import reference_text

Split = Literal["a", "b"]
LABELS = (-1, 0, 1)


class RecordError(ValueError):
    """A record that cannot be evaluated; the message names the file, line and field."""


@dataclass(frozen=True)
class Record:
    id: str
    task: str
    request: ScoreRequest
    step_labels: dict[int, int]
    """Human label (+1 / 0 / -1) by message index; an absent index was not labelled."""
    final_label: int | None = None
    llm_labels: dict[str, dict[int, int | None]] = field(default_factory=dict)
    """Reference annotators: name → labels by message index (None where one skipped a step)."""
    first_error: int | None = None
    """ProcessBench-style records: the message index of the first wrong step (None: none)."""
    first_error_style: bool = False
    """True when the record says where its first error is (`meta.first_error_message_index`)."""
    source: str = ""
    reference: str | None = None
    """The known answer (`reference`, else `meta.ground_truth`), for the `+ref` arms."""

    @property
    def split(self) -> Split:
        return split_of(self.task or self.id)


def split_of(key: str) -> Split:
    """A fixed half of the data by hashing the task, so every sample of one task falls on the
    same side and cut points fitted on one half never saw the other half's tasks."""
    return "a" if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else "b"


def _labels(value: Any, where: str, assistant: set[int], allow_null: bool) -> dict[int, Any]:
    if not isinstance(value, Mapping):
        raise RecordError(f"{where}: must be an object of message index → label")
    labels: dict[int, Any] = {}
    for key, label in value.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise RecordError(f"{where}: key {key!r} is not a message index") from None
        if index not in assistant:
            raise RecordError(f"{where}.{key}: message {index} is not an assistant message")
        if label is None and allow_null:
            labels[index] = None
            continue
        if isinstance(label, bool) or label not in LABELS:
            raise RecordError(f"{where}.{key}: label must be -1, 0 or 1, got {label!r}")
        labels[index] = label
    return labels


def _final(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or value not in LABELS:
        raise RecordError(f"{where}: must be -1, 0, 1 or null, got {value!r}")
    return int(value)


def _reference(raw: Mapping[str, Any], where: str) -> str | None:
    """The top-level `reference` (a string, or a list of acceptable answers), else the
    ground truth in `meta` (AgentProcessBench keeps Search-R1's `{"target": [...]}` there)."""
    if "reference" in raw and raw["reference"] is not None:
        given = raw["reference"]
        texts = given if isinstance(given, list) else [given]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise RecordError(
                f"{where}: reference: must be a non-empty string or list of them, got {given!r}"
            )
        return reference_text(given)
    meta = raw.get("meta")
    if isinstance(meta, Mapping):
        return reference_text(meta.get("ground_truth"))
    return None


def parse_record(raw: Any, where: str) -> Record:
    """One JSON record → Record, or a RecordError naming `where` and the field."""
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: a record must be a JSON object")
    rid = str(raw.get("id") or where)
    if "messages" not in raw:
        hint = " (a labels-only record)" if raw.get("trajectory_available") is False else ""
        raise RecordError(f"{where} ({rid}): no `messages`{hint}; nothing to judge")
    reference = _reference(raw, f"{where} ({rid})")
    try:
        request = ScoreRequest.model_validate(
            {
                "messages": raw["messages"],
                "tools": raw.get("tools"),
                "request_id": rid,
                "reference": reference,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"])
        raise RecordError(f"{where} ({rid}): {at}: {first['msg']}") from None
    messages = raw["messages"]
    assistant = {i for i, m in enumerate(messages) if m.get("role") == "assistant"}
    if "step_labels" not in raw:
        raise RecordError(f"{where} ({rid}): no `step_labels`")
    step_labels = _labels(raw["step_labels"], f"{where} ({rid}): step_labels", assistant, False)
    llm: dict[str, dict[int, int | None]] = {}
    for name, entry in (raw.get("llm_labels") or {}).items():
        at = f"{where} ({rid}): llm_labels.{name}"
        if not isinstance(entry, Mapping):
            raise RecordError(f"{at}: must be an object with `step_labels`")
        llm[str(name)] = _labels(entry.get("step_labels") or {}, at, assistant, True)
    meta = raw.get("meta") or {}
    style = isinstance(meta, Mapping) and "first_error_message_index" in meta
    first_error = meta.get("first_error_message_index") if style else None
    if first_error is not None and first_error not in assistant:
        raise RecordError(
            f"{where} ({rid}): meta.first_error_message_index {first_error!r} is not the index "
            "of an assistant message"
        )
    task = raw.get("task")
    if not isinstance(task, str) or not task:
        first_user = next((m for m in messages if m.get("role") == "user"), None)
        task = str(first_user.get("content") or "") if first_user else ""
    return Record(
        id=rid,
        task=task,
        request=request,
        step_labels=step_labels,
        final_label=_final(raw.get("final_label"), f"{where} ({rid}): final_label"),
        llm_labels=llm,
        first_error=first_error,
        first_error_style=style,
        source=str(raw.get("source") or ""),
        reference=reference,
    )


def iter_records(path: Path, limit: int | None = None) -> Iterator[Record]:
    with path.open(encoding="utf-8") as handle:
        count = 0
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            if limit is not None and count >= limit:
                return
            where = f"{path.name}:{number}"
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{where}: not JSON: {exc}") from None
            yield parse_record(raw, where)
            count += 1


def read_records(
    path: Path, limit: int | None = None, *, sample: int | None = None, seed: int = 0
) -> list[Record]:
    """Every record of a JSONL file (the first `limit`), validated; ids must be unique.

    `sample` keeps a seeded random `sample` of them, in file order: files are often sorted
    (ProcessBench lists its wrong solutions first), so the first N can be all of one kind.
    """
    records = list(iter_records(path, limit))
    if sample is not None and sample < len(records):
        keep = set(random.Random(seed).sample(range(len(records)), sample))
        records = [r for i, r in enumerate(records) if i in keep]
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise RecordError(f"{path.name}: id {record.id!r} appears twice")
        seen.add(record.id)
    return records
