"""The deterministic checks on human-labelled steps: how often each fires on steps people
labelled correct (+1: false alarms, or real slips the labels forgave) and on steps they
labelled wrong (-1; in ProcessBench, the first wrong step), with Wilson 95% intervals and the
cost per step. Then the corruptions: how many correct steps each kind applies to, and how often
the checks catch the corrupted version while staying silent on the original.

    .venv/bin/python bench/checks_corpus.py [--data FILE.jsonl ...]

(default: ../shared/data/dev/processbench_dev.jsonl; the HotpotQA file exercises the tool and
answer checks)

Every labelled assistant step is checked with all checks; evidence is the tool messages before
the step and those answering its own calls. Nothing is tuned here: read the numbers, not the
records.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dev"

from scribe_service.evaluation.perturb import (  # noqa: E402
    CORRUPTIONS,
    PerturbContext,
    StepContent,
)
from scribe_service.pipeline.checks import (  # noqa: E402
    CHECKS,
    CheckInput,
    CheckToolCall,
    run_checks,
)


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def steps(record: dict[str, Any]) -> Iterator[tuple[int, CheckInput]]:
    """(human label, check input) for every labelled assistant step."""
    messages = record["messages"]
    for key, label in record["step_labels"].items():
        index = int(key)
        message = messages[index]
        before = [m["content"] for m in messages[:index] if m["role"] == "tool"]
        own = []
        for m in messages[index + 1 :]:
            if m["role"] != "tool":
                break
            own.append(m["content"])
        calls = [
            CheckToolCall(c["function"]["name"], c["function"]["arguments"])
            for c in message.get("tool_calls") or ()
        ]
        yield (
            label,
            CheckInput(
                text=message.get("content") or "",
                tool_calls=calls,
                tools=record.get("tools"),
                task=record.get("task", ""),
                evidence=[*before, *own],
            ),
        )


def percent(hits: int, n: int) -> str:
    low, high = wilson(hits, n)
    return f"{hits:>4}/{n:<5} {100 * hits / max(n, 1):5.1f}% [{100 * low:4.1f}, {100 * high:4.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", type=Path)
    args = parser.parse_args()
    paths = args.data or [DATA / "processbench_dev.jsonl"]
    names = list(CHECKS)
    for path in paths:
        fired: dict[tuple[str, str, int], int] = Counter()
        totals: dict[tuple[str, int], int] = Counter()
        caught: dict[str, Counter[str]] = defaultdict(Counter)
        elapsed, count = 0.0, 0
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            source = record["source"]
            for label, inp in steps(record):
                started = time.perf_counter()
                findings = run_checks(names, inp)
                elapsed += time.perf_counter() - started
                count += 1
                for key in ((source, label), ("all", label)):
                    totals[key] += 1
                for name in {f.check for f in findings}:
                    for group in (source, "all"):
                        fired[(group, name, label)] += 1
                if label == 1 and not findings:
                    _corruptions(inp, caught)
        print(
            f"== {path.name}: {count} labelled steps, {1e6 * elapsed / max(count, 1):.0f} µs/step"
        )
        groups = sorted({g for g, _ in totals}, key=lambda g: (g == "all", g))
        for name in names:
            print(f"-- check {name}")
            for group in groups:
                cells = [
                    f"{label:+d}: {percent(fired[(group, name, label)], totals[(group, label)])}"
                    for label in (1, 0, -1)
                    if totals[(group, label)]
                ]
                print(f"   {group:<32} " + "   ".join(cells))
        print("-- corruptions of +1 steps where the checks are silent on the original")
        for kind in CORRUPTIONS:
            applied = caught[kind]["applied"]
            rate = percent(caught[kind]["caught"], applied)
            print(f"   {kind:<28} applies to {applied:>5}; checks catch {rate}")
        sys.stdout.flush()


def _corruptions(inp: CheckInput, caught: dict[str, Counter[str]]) -> None:
    step = StepContent(inp.text, tuple(inp.tool_calls))
    context = PerturbContext(task=inp.task, evidence=inp.evidence, tools=inp.tools)
    for kind, corrupter in CORRUPTIONS.items():
        corruption = corrupter(step, context, 0)
        if corruption is None:
            continue
        changed = corruption.apply(step)
        corrupted = CheckInput(
            text=changed.text,
            tool_calls=changed.tool_calls,
            tools=inp.tools,
            task=inp.task,
            evidence=inp.evidence,
        )
        caught[kind]["applied"] += 1
        caught[kind]["caught"] += bool(run_checks(list(CHECKS), corrupted))


if __name__ == "__main__":
    main()
