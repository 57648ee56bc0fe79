"""Stage 1: trajectory records → the steps a library is learned from, each with its subgoal.

Steps come from the service's own segmenter, so a built library is learned from exactly the
subgoals the service will route at scoring time. Step labels are optional here (the issue's
records may carry none); where a record has them, each step keeps its human label so the
distiller can show members that went well and badly.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scribe_service.evaluation.records import Record, RecordError, parse_record
from scribe_service.library_build.errors import BuildError
from scribe_service.pipeline.segment import Step, segment

EMPTY_SUBGOAL = "(empty step)"


@dataclass(frozen=True)
class BuildStep:
    record_id: str
    source: str
    step: Step
    label: int | None
    """The human step label (+1 / 0 / -1) when the record has one for this message."""
    task: str = ""
    """The record's task, the context an LLM-written subgoal is asked with."""
    llm_subgoal: str | None = None
    """The judge LLM's subgoal for a step whose subgoal was derived (`--llm-subgoals`)."""

    @property
    def subgoal(self) -> str:
        """The service's own subgoal: the one the serving router sees."""
        return self.step.subgoal

    @property
    def cluster_subgoal(self) -> str:
        """The subgoal a build clusters and distils on: the LLM's when it wrote one."""
        return self.llm_subgoal or self.step.subgoal


def read_build_records(
    path: Path, *, limit: int | None = None, sample: int | None = None, seed: int = 0
) -> list[Record]:
    """Every trajectory record of a JSONL file, validated, labels optional.

    `limit` keeps the first N records; `sample` then a seeded random N of those, in file order
    (corpus files are often sorted, so the first N can all be one kind)."""
    records: list[Record] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BuildError(f"{path}: cannot read: {exc}") from exc
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if limit is not None and len(records) >= limit:
            break
        where = f"{path.name}:{number}"
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BuildError(f"{where}: not JSON: {exc}") from None
        if isinstance(raw, dict):
            # The evaluation reader insists on labels; a build learns from unlabelled data too.
            raw.setdefault("step_labels", {})
        try:
            records.append(parse_record(raw, where))
        except RecordError as exc:
            raise BuildError(str(exc)) from None
    if sample is not None and sample < len(records):
        keep = set(random.Random(seed).sample(range(len(records)), sample))
        records = [r for i, r in enumerate(records) if i in keep]
    if not records:
        raise BuildError(f"{path}: no trajectory records")
    return records


def data_digest(path: Path) -> str:
    """The sha256 of the input file, for the manifest: a library names the data it came from."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decompose(records: Sequence[Record]) -> list[BuildStep]:
    """Every step of every record, in order; a step with nothing to say is left out (it has no
    skill to learn and would only gather into a cluster of empty steps)."""
    steps = []
    for record in records:
        segmented = segment(messages=record.request.messages)
        for step in segmented.steps:
            if step.subgoal == EMPTY_SUBGOAL:
                continue
            label = (
                None if step.message_index is None else record.step_labels.get(step.message_index)
            )
            steps.append(BuildStep(record.id, record.source, step, label, record.task))
    return steps
