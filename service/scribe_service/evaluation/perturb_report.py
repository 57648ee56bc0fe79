"""The report folder of `scribe eval perturb`: `summary.json`, `report.md`, the detection and
score-drop bar charts, and the printed table. Same conventions as report.py (strict JSON,
estimates as `value [lo, hi] (n=…)`, `n/a` where nothing could be computed)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from scribe_service.evaluation.report import _markdown_table, _pyplot, fmt

PLOTS = {
    "detection": ("detection.png", "detection rate (corrupted scored lower)"),
    "mean_drop_score": ("score_drop.png", "mean score drop (0-3 scale)"),
}


def _rows(summary: Mapping[str, Any]) -> list[list[str]]:
    rows = [["corruption", "arm", "pairs", "failed", "ties", "detection", "judge alone",
             "mean drop (reward 0-1)", "mean drop (score 0-3)"]]  # fmt: skip
    for kind in summary["pairs"]:
        for arm, data in summary["arms"].items():
            entry = data["kinds"][kind]
            rows.append(
                [kind, arm, str(entry["n"]), str(entry["failed"]), str(entry["ties"]),
                 fmt(entry["detection"]), fmt(entry.get("detection_by_judge")),
                 fmt(entry["mean_drop"]), fmt(entry["mean_drop_score"])]
            )  # fmt: skip
    return rows


def print_summary(summary: Mapping[str, Any], console: Console) -> None:
    rows = _rows(summary)
    table = Table(title=f"scribe eval perturb: {summary['data']}", title_justify="left")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)


def write_report(out: Path, summary: Mapping[str, Any], plots: Sequence[str]) -> None:
    text = json.dumps(summary, indent=2, allow_nan=False)  # strict JSON: null, never NaN
    (out / "summary.json").write_text(text + "\n", encoding="utf-8")
    setup = summary["setup"]
    found = [
        [kind, str(counts["found"]), str(counts["judged"])]
        for kind, counts in summary["pairs"].items()
    ]
    parts = [
        f"# scribe eval perturb: `{summary['data']}`",
        "",
        f"Judge `{setup.get('judge_model')}` ({setup.get('mode')} mode, temperature "
        f"{setup.get('temperature')}, seed {setup.get('seed')}), library "
        f"`{setup.get('library_version')}`, {summary['records']} records, corruption seed "
        f"{summary['corruption_seed']}. Each pair is a step under test (labelled +1, or every "
        "step of an unlabelled record) and one corrupted twin, judged by the same arm in the "
        "same context. Detection: share of pairs where the twin's reward is strictly lower "
        "(a tie is no detection); judge alone: the same from the judge's own scores, before "
        "the deterministic checks capped them. Mean drop: original minus twin. Values with "
        "bootstrap 95 % "
        "intervals (records resampled) and the number of pairs; a pair with either side "
        "failed is counted in `failed` and left out, never scored. See docs/perturb.md.",
        "",
        _markdown_table(_rows(summary)),
        "",
        "## Corruptions",
        "",
        "Steps each kind applied to, and how many were judged (`--per-kind` caps them); "
        "every judged one is described in `corruptions.jsonl`.",
        "",
        _markdown_table([["corruption", "found", "judged"], *found]),
        "",
        "## Plots",
        "",
        *(f"![{name}]({name})" for name in plots),
    ]
    (out / "report.md").write_text("\n".join(parts) + "\n", encoding="utf-8")


def _bars(plt: Any, path: Path, summary: Mapping[str, Any], metric: str, title: str) -> None:
    arms = list(summary["arms"])
    # A kind that found nothing to corrupt has no bars at all: it is left out of the plot.
    kinds = [k for k in summary["pairs"] if any(summary["arms"][a]["kinds"][k]["n"] for a in arms)]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(kinds) * len(arms) + 1.5), 3.8))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        values: list[float] = []
        errors: list[list[float]] = [[], []]
        for kind in kinds:
            est = summary["arms"][arm]["kinds"][kind][metric]
            value, lo, hi = est["value"], est["lo"], est["hi"]
            # Nothing judged is no bar, never a bar at 0.
            values.append(math.nan if value is None else value)
            errors[0].append(0 if lo is None or value is None else value - lo)
            errors[1].append(0 if hi is None or value is None else hi - value)
        xs = [x + i * width for x in range(len(kinds))]
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=arm)
        for x, value in zip(xs, values, strict=True):
            if math.isnan(value):
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xlim(-width, len(kinds) - 1 + len(arms) * width)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(kinds))])
    ax.set_xticklabels(kinds, rotation=30, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out: Path, summary: Mapping[str, Any]) -> list[str]:
    """The PNGs for `summary`, written under `out`; returns their file names."""
    plt = _pyplot()
    for metric, (name, title) in PLOTS.items():
        _bars(plt, out / name, summary, metric, title)
    return [name for name, _ in PLOTS.values()]
