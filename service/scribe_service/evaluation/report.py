"""Write an evaluation's report folder: `summary.json`, `report.md` and PNG plots, and print
the summary table.

matplotlib (the `eval` extra) is imported here only, with the non-interactive Agg backend,
so the rest of the service never needs it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

LABELS_METRICS = {
    "step_auroc": "step AUROC (+1 vs rest)",
    "spearman": "Spearman (reward vs label)",
    "agreement3": "3-class agreement",
    "first_error_f1": "first-error F1 (ProcessBench)",
    "trajectory_auroc": "trajectory AUROC (vs final_label)",
}
CONSISTENCY_METRICS = {
    "modal_agreement": "agreement with modal score",
    "score_std": "score std (verdict repeats)",
    "logprob_expected_std": "expected-score std (logprob repeats)",
    "cross_instance_agreement": "cross-instance exact agreement",
    "cross_instance_gap": "cross-instance mean |gap|",
}


def fmt(estimate: Mapping[str, Any] | None) -> str:
    if not estimate or estimate.get("value") is None:
        return "n/a"
    text = f"{estimate['value']:.3f}"
    if estimate.get("lo") is not None:
        text += f" [{estimate['lo']:.3f}, {estimate['hi']:.3f}]"
    return text + f" (n={estimate.get('n', 0)})"


def _table_rows(summary: Mapping[str, Any], names: Mapping[str, str]) -> list[list[str]]:
    arms = summary["arms"]
    present = [k for k in names if any(k in arms[a]["metrics"] for a in arms)]
    header = ["arm", "judged", "failed", *(names[k] for k in present)]
    rows = [header]
    for arm, data in arms.items():
        rows.append(
            [arm, str(data["n"]), str(data["failed"]),
             *(fmt(data["metrics"].get(k)) for k in present)]
        )  # fmt: skip
    return rows


def print_summary(summary: Mapping[str, Any], console: Console) -> None:
    names = LABELS_METRICS if summary["command"] == "labels" else CONSISTENCY_METRICS
    rows = _table_rows(summary, names)
    title = f"scribe eval {summary['command']}: {summary['data']}"
    table = Table(title=title, title_justify="left")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    for name, estimate in (summary.get("reference") or {}).items():
        console.print(f"  reference {name}: 3-class agreement {fmt(estimate)}")


def _markdown_table(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def write_report(out: Path, summary: dict[str, Any], plots: Sequence[str]) -> None:
    # The per-step lists behind the plots stay out of summary.json.
    plain = {
        **summary,
        "arms": {
            arm: {k: v for k, v in data.items() if k not in ("score_by_label", "histograms")}
            for arm, data in summary["arms"].items()
        },
    }
    text = json.dumps(plain, indent=2, allow_nan=False)  # strict JSON: null, never NaN
    (out / "summary.json").write_text(text + "\n", encoding="utf-8")
    command = summary["command"]
    names = LABELS_METRICS if command == "labels" else CONSISTENCY_METRICS
    setup = summary["setup"]
    parts = [
        f"# scribe eval {command}: `{summary['data']}`",
        "",
        f"Judge `{setup.get('judge_model')}` ({setup.get('mode')} mode, temperature "
        f"{setup.get('temperature')}, seed {setup.get('seed')}), library "
        f"`{setup.get('library_version')}`, {summary['records']} records. "
        "Values with bootstrap 95 % intervals (records resampled) and the number of items "
        "each is computed on; `n/a` where a number cannot be computed (one class present, "
        "nothing judged). Failed judgments are counted, never scored.",
        "",
        _markdown_table(_table_rows(summary, names)),
        "",
    ]
    if command == "labels":
        parts += _labels_sections(summary)
    else:
        parts += _consistency_sections(summary)
    parts += ["## Plots", ""] + [f"![{name}]({name})" for name in plots]
    (out / "report.md").write_text("\n".join(parts) + "\n", encoding="utf-8")


def _labels_sections(summary: Mapping[str, Any]) -> list[str]:
    split = summary["split"]
    parts = [
        "## How the numbers were made",
        "",
        f"Records are split in two halves by a hash of their task (`a`: {split['a']} records, "
        f"`b`: {split['b']}). Cut points (score → -1/0/+1) and the first-error threshold are "
        f"fitted on split `{split['fit']}` and every fitted metric is reported on split "
        f"`{split['report']}` only. Step AUROC, Spearman, trajectory AUROC (process reward, "
        f"{summary['aggregation']} of step rewards) and calibration use all records.",
        "",
    ]
    reference = summary.get("reference") or {}
    if reference:
        parts += [
            "## Reference rows on the same steps",
            "",
            "A constant guess (the fit split's most common human label for every step: what an "
            "arm whose cut points separate nothing scores) and, where the records carry them, "
            "the benchmark's own LLM annotators.",
            "",
            _markdown_table(
                [["label set", "3-class agreement"]]
                + [[name, fmt(est)] for name, est in reference.items()]
            ),
            "",
        ]
    parts += ["## Failures and cut points", ""]
    for arm, data in summary["arms"].items():
        errors = ", ".join(f"{k}: {v}" for k, v in data["failed_by_error"].items())
        parts.append(
            f"- `{arm}`: {data['n']} judged, {data['failed']} failed"
            f"{f' ({errors})' if errors else ''}, {data['not_judged']} not judged, "
            f"{data['incomplete_trajectories']} incomplete trajectories, "
            f"{data.get('capped_by_check', 0)} capped by a deterministic check; cut points "
            f"{data['cut_points']}, first-error threshold {data['first_error_threshold']}"
        )
        alone = data.get("judge_alone")
        if alone and data.get("capped_by_check"):
            parts.append(
                f"  - step AUROC from the judge alone (before the checks' caps) "
                f"{fmt(alone['step_auroc'])}; the checks' effect (paired) "
                f"{fmt(alone['checks_effect'])}"
            )
    parts += ["", "## Per prototype (routed), agreement on the reported split", ""]
    rows = [["prototype", *(f"{arm}: agreement (n)" for arm in summary["arms"]),
             "count", "mean score by label -1 / 0 / +1 (scribe)"]]  # fmt: skip
    first = next(iter(summary["arms"].values()))
    for prototype, info in first["per_prototype"].items():
        row = [prototype]
        for data in summary["arms"].values():
            entry = data["per_prototype"].get(prototype)
            agreement = None if entry is None else entry["agreement"]
            row.append("n/a" if agreement is None else f"{agreement:.2f} ({entry['agreement_n']})")
        by_label = info["mean_score_by_label"]
        row += [str(info["count"]),
                " / ".join("-" if by_label[k] is None else f"{by_label[k]:.2f}"
                           for k in ("-1", "0", "1"))]  # fmt: skip
        rows.append(row)
    parts += [_markdown_table(rows), ""]
    return parts


def _consistency_sections(summary: Mapping[str, Any]) -> list[str]:
    setup = summary["setup"]
    return [
        "## How the numbers were made",
        "",
        f"Each step judged {setup['repeats']} times in verdict mode at temperature "
        f"{setup['temperature']} (seed + repeat), and {setup['logprob_repeats']} times in "
        "logprob mode (whose spread should be zero). Cross-instance: pairs of steps from "
        "different tasks routed to the same prototype with the same human label, each step "
        "represented by its modal score over the repeats.",
        "",
    ]


# --- plots ---------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(plt: Any, path: Path, summary: Mapping[str, Any], names: Mapping[str, str]) -> None:
    arms = list(summary["arms"])
    keys = [k for k in names if any(k in summary["arms"][a]["metrics"] for a in arms)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        values: list[float] = []
        errors: list[list[float]] = [[], []]
        for arm in arms:
            est = summary["arms"][arm]["metrics"].get(key) or {}
            value = est.get("value")
            values.append(0 if value is None else value)
            lo, hi = est.get("lo"), est.get("hi")
            errors[0].append(0 if lo is None or value is None else value - lo)
            errors[1].append(0 if hi is None or value is None else hi - value)
        ax.bar(arms, values, yerr=errors, capsize=4, color="#4C72B0")
        for i, arm in enumerate(arms):
            if (summary["arms"][arm]["metrics"].get(key) or {}).get("value") is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom")
        ax.set_title(names[key], fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _score_by_label(plt: Any, path: Path, summary: Mapping[str, Any]) -> None:
    arms = list(summary["arms"])
    fig, axes = plt.subplots(1, len(arms), figsize=(3.2 * len(arms), 3.2), squeeze=False)
    for ax, arm in zip(axes[0], arms, strict=True):
        by_label = summary["arms"][arm]["score_by_label"]
        data = [[3 * r for r in by_label[k]] for k in ("-1", "0", "1")]
        # Side-by-side histograms over the 0-3 scale (logprob mode gives fractional scores).
        ax.hist(data, bins=[-0.5, 0.5, 1.5, 2.5, 3.5], label=["label -1", "label 0", "label +1"])
        ax.set_xticks([0, 1, 2, 3])
        ax.set_xlabel("score")
        ax.set_title(f"{arm}: score by human label", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _calibration(plt: Any, path: Path, summary: Mapping[str, Any]) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for arm, data in summary["arms"].items():
        xs, ys = [], []
        for label in ("-1", "0", "1"):
            value = data["calibration"][label]["value"]
            if value is not None:
                xs.append(int(label))
                ys.append(value)
        ax.plot(xs, ys, marker="o", label=arm)
    ax.set_xticks([-1, 0, 1])
    ax.set_xlabel("human label")
    ax.set_ylabel("mean step reward")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _per_prototype(plt: Any, path: Path, summary: Mapping[str, Any]) -> None:
    arms = list(summary["arms"])
    prototypes = sorted({p for a in arms for p in summary["arms"][a]["per_prototype"]})
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(prototypes) * len(arms)), 3.8))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        values = []
        for prototype in prototypes:
            entry = summary["arms"][arm]["per_prototype"].get(prototype) or {}
            # No agreement (too few steps, one class) is no bar, never a bar at 0.
            agreement = entry.get("agreement")
            values.append(math.nan if agreement is None else agreement)
        ax.bar([x + i * width for x in range(len(prototypes))], values, width, label=arm)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(prototypes))])
    ax.set_xticklabels(prototypes, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("3-class agreement")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _histograms(plt: Any, path: Path, summary: Mapping[str, Any]) -> None:
    arms = list(summary["arms"])
    keys = ("modal_agreement", "score_std", "logprob_expected_std")
    fig, axes = plt.subplots(
        len(keys), len(arms), figsize=(3.2 * len(arms), 2.6 * len(keys)), squeeze=False
    )
    for col, arm in enumerate(arms):
        for row, key in enumerate(keys):
            ax = axes[row][col]
            values = summary["arms"][arm]["histograms"][key]
            ax.hist(values, bins=10)
            ax.set_title(f"{arm}: {CONSISTENCY_METRICS[key]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out: Path, summary: Mapping[str, Any]) -> list[str]:
    """The PNGs for `summary`, written under `out`; returns their file names."""
    plt = _pyplot()
    plots: dict[str, Callable[[Path], None]]
    if summary["command"] == "labels":
        plots = {
            "metrics.png": lambda p: _bars(plt, p, summary, LABELS_METRICS),
            "score_by_label.png": lambda p: _score_by_label(plt, p, summary),
            "calibration.png": lambda p: _calibration(plt, p, summary),
            "per_prototype.png": lambda p: _per_prototype(plt, p, summary),
        }
    else:
        plots = {
            "metrics.png": lambda p: _bars(plt, p, summary, CONSISTENCY_METRICS),
            "consistency_histograms.png": lambda p: _histograms(plt, p, summary),
        }
    for name, draw in plots.items():
        draw(out / name)
    return list(plots)
