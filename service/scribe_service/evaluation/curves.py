"""`scribe eval curves LOG --out DIR`: training curves from the score log (score_log.py).

The paper's co-evolution picture: which skills the policy masters first. LOG and its rotated
backups are read oldest first (LOG.N … LOG.1, then LOG). Each line whose `metadata` carries a
numeric step key (`global_step` unless `--step-key` says otherwise) falls into a bucket of
training steps; per prototype, per domain and overall, a bucket holds the judged steps, their
mean score, and the failed steps.

Rules that keep the numbers honest:

* A failed step has no score. It is counted (a failure rate per bucket), never averaged in as 0.
* A line without the step key, or with one that is not a number, is counted and reported, not
  dropped silently; so is a line that is not valid JSON (a write cut short by a crash).
* The score is the judge's 0-3 score; in logprob mode its expected score, which is what the
  step's reward is made of.
* Few distinct steps (at most `--bins`): one bucket per step. More: `--bins` equal-width buckets
  from the first step to the last.
* `--step-key @time` puts each line at its own time (minutes since the first line) instead:
  the axis for a trainer that cannot send its step (OpenRLHF's /get_reward sends no metadata).

Pure functions (`read_log`, `summarise`) build the summary; `write_curves` writes the folder.
matplotlib (the `eval` extra) is imported only to draw.
"""

from __future__ import annotations

import glob
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

DEFAULT_STEP_KEY = "global_step"
TIME_KEY = "@time"
"""The step key that means: the line's own time, not a metadata field."""
DEFAULT_BINS = 20
DEFAULT_TOP = 8
UNKNOWN_DOMAIN = "unknown"


class CurvesError(ValueError):
    """The log cannot be read as asked (missing, empty, bad arguments): a usage error."""


@dataclass(frozen=True)
class Point:
    """One scored step of the log, placed at its training step."""

    step: float
    prototype_id: str
    domain: str
    score: float | None
    """None: the step failed."""


@dataclass
class LogContents:
    files: list[Path]
    points: list[Point] = field(default_factory=list)
    lines: int = 0
    unreadable: int = 0
    missing_step: int = 0
    non_numeric_step: int = 0
    filtered: int = 0
    judge_models: Counter[str] = field(default_factory=Counter)
    library_versions: Counter[str] = field(default_factory=Counter)


def log_files(log: Path) -> list[Path]:
    """LOG's rotated backups, oldest (highest number) first, then LOG itself if present."""
    backups = []
    for path in log.parent.glob(glob.escape(log.name) + ".*"):
        suffix = path.name[len(log.name) + 1 :]
        if suffix.isdigit() and path.is_file():
            backups.append((int(suffix), path))
    files = [path for _, path in sorted(backups, reverse=True)]
    if log.is_file():
        files.append(log)
    if not files:
        raise CurvesError(f"{log}: no score log there (nor rotated backups {log.name}.1, …)")
    return files


def _step_value(value: Any) -> float | None:
    # A bool is an int to Python, but never a training step.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _score(line: Mapping[str, Any]) -> float | None:
    expected = line.get("expected_score")
    score = expected if expected is not None else line.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None
    return float(score)


def read_log(
    log: Path, *, step_key: str = DEFAULT_STEP_KEY, where: Mapping[str, str] | None = None
) -> LogContents:
    """Every line of LOG and its backups, as points or counted reasons for not being one.

    `where` keeps only lines whose metadata has each key equal (as text) to its value, e.g.
    {"run": "grpo-7"} when several runs share one log."""
    contents = LogContents(files=log_files(log))
    for path in contents.files:
        for text in _text_lines(path):
            contents.lines += 1
            _read_line(text, contents, step_key, where or {})
    if contents.lines == 0:
        raise CurvesError(f"{log}: the score log is empty ({len(contents.files)} file(s))")
    if step_key == TIME_KEY and contents.points:
        start = min(point.step for point in contents.points)
        contents.points = [replace(p, step=(p.step - start) / 60) for p in contents.points]
    return contents


def _time_value(value: Any) -> float | None:
    try:
        stamp = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return stamp.timestamp() if stamp.tzinfo is not None else None


def _text_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for text in handle:
            if text.strip():
                yield text


def _read_line(text: str, contents: LogContents, step_key: str, where: Mapping[str, str]) -> None:
    try:
        line = json.loads(text)
    except ValueError:
        line = None
    status = line.get("status") if isinstance(line, dict) else None
    prototype = line.get("prototype_id") if isinstance(line, dict) else None
    score = _score(line) if isinstance(line, dict) else None
    if (
        not isinstance(line, dict)
        or not isinstance(prototype, str)
        or status not in ("ok", "failed")
        or (status == "ok" and score is None)
    ):
        contents.unreadable += 1
        return
    metadata = line.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    if any(str(metadata.get(key)) != value for key, value in where.items()):
        contents.filtered += 1
        return
    if step_key == TIME_KEY:
        step = _time_value(line.get("time"))
    elif step_key not in metadata:
        contents.missing_step += 1
        return
    else:
        step = _step_value(metadata[step_key])
    if step is None:
        contents.non_numeric_step += 1
        return
    contents.judge_models[str(line.get("judge_model"))] += 1
    contents.library_versions[str(line.get("library_version"))] += 1
    domain = line.get("domain")
    contents.points.append(
        Point(
            step=step,
            prototype_id=prototype,
            domain=domain if isinstance(domain, str) else UNKNOWN_DOMAIN,
            score=score if status == "ok" else None,
        )
    )


# --- buckets and the summary ----------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    start: float
    end: float

    @property
    def x(self) -> float:
        return (self.start + self.end) / 2


def make_buckets(steps: Iterable[float], bins: int) -> list[Bucket]:
    """One bucket per distinct step when there are at most `bins`; else `bins` equal widths."""
    if bins < 1:
        raise CurvesError(f"--bins must be at least 1 (got {bins})")
    distinct = sorted(set(steps))
    if len(distinct) <= bins:
        return [Bucket(step, step) for step in distinct]
    low, high = distinct[0], distinct[-1]
    width = (high - low) / bins
    return [Bucket(low + i * width, high if i == bins - 1 else low + (i + 1) * width)
            for i in range(bins)]  # fmt: skip


def bucket_indexer(buckets: Sequence[Bucket]) -> Callable[[float], int]:
    """Maps a step to the index of its bucket in `buckets` (from `make_buckets`)."""
    if all(b.start == b.end for b in buckets):
        where = {b.start: i for i, b in enumerate(buckets)}
        return where.__getitem__
    low, high, count = buckets[0].start, buckets[-1].end, len(buckets)
    return lambda step: min(int((step - low) / (high - low) * count), count - 1)


@dataclass
class _Tally:
    n: int = 0
    total: float = 0.0
    failed: int = 0

    def add(self, score: float | None) -> None:
        if score is None:
            self.failed += 1
        else:
            self.n += 1
            self.total += score

    def as_dict(self) -> dict[str, Any]:
        seen = self.n + self.failed
        return {
            "n": self.n,
            "mean_score": None if self.n == 0 else round(self.total / self.n, 6),
            "failed": self.failed,
            "failure_rate": None if seen == 0 else round(self.failed / seen, 6),
        }


def _series(points: Sequence[Point], buckets: Sequence[Bucket]) -> dict[str, Any]:
    overall, per_bucket = _Tally(), [_Tally() for _ in buckets]
    index = bucket_indexer(buckets)
    for point in points:
        overall.add(point.score)
        per_bucket[index(point.step)].add(point.score)
    return {**overall.as_dict(), "buckets": [tally.as_dict() for tally in per_bucket]}


def _by_frequency(names: Iterable[str]) -> list[str]:
    counts = Counter(names)
    return sorted(counts, key=lambda name: (-counts[name], name))


def summarise(
    contents: LogContents, log: Path, *, step_key: str = DEFAULT_STEP_KEY, bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """The numbers behind the plots: per bucket, overall, per domain and per prototype."""
    points = contents.points
    buckets = make_buckets((p.step for p in points), bins)
    domains: dict[str, list[Point]] = {}
    prototypes: dict[str, list[Point]] = {}
    for point in points:
        domains.setdefault(point.domain, []).append(point)
        prototypes.setdefault(point.prototype_id, []).append(point)
    return {
        "command": "curves",
        "log": str(log),
        "files": [str(path) for path in contents.files],
        "step_key": step_key,
        "x_label": "minutes since the first line" if step_key == TIME_KEY else step_key,
        "lines": {
            "total": contents.lines,
            "with_step": len(points),
            "judged": sum(p.score is not None for p in points),
            "failed": sum(p.score is None for p in points),
            "without_step": contents.missing_step,
            "non_numeric_step": contents.non_numeric_step,
            "unreadable": contents.unreadable,
            "filtered_out": contents.filtered,
        },
        "judge_models": dict(contents.judge_models),
        "library_versions": dict(contents.library_versions),
        "buckets": [{"start": b.start, "end": b.end, "x": b.x} for b in buckets],
        "overall": _series(points, buckets),
        "domains": {
            name: _series(domains[name], buckets)
            for name in _by_frequency(p.domain for p in points)
        },
        "prototypes": {
            name: {"domain": prototypes[name][0].domain, **_series(prototypes[name], buckets)}
            for name in _by_frequency(p.prototype_id for p in points)
        },
    }


# --- output -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ends(series: Mapping[str, Any]) -> tuple[float | None, float | None]:
    means = [b["mean_score"] for b in series["buckets"] if b["mean_score"] is not None]
    return (means[0], means[-1]) if means else (None, None)


def table_rows(summary: Mapping[str, Any], top: int = DEFAULT_TOP) -> list[list[str]]:
    """Overall, every domain and the `top` most frequent prototypes: counts and end points."""
    rows = [["series", "judged", "failed", "fail %", "mean", "first", "last"]]
    named = [("overall", summary["overall"])]
    named += [(f"domain {name}", s) for name, s in summary["domains"].items()]
    named += [(name, s) for name, s in list(summary["prototypes"].items())[:top]]
    for name, series in named:
        first, last = _ends(series)
        rate = series["failure_rate"]
        rows.append([name, str(series["n"]), str(series["failed"]),
                     "-" if rate is None else f"{100 * rate:.1f}",
                     _fmt(series["mean_score"]), _fmt(first), _fmt(last)])  # fmt: skip
    return rows


def _notes(summary: Mapping[str, Any]) -> list[str]:
    lines = summary["lines"]
    notes = [
        f"{lines['total']} lines in {len(summary['files'])} file(s); {lines['with_step']} "
        f"carry a numeric `{summary['step_key']}` ({lines['judged']} judged, "
        f"{lines['failed']} failed) in {len(summary['buckets'])} step buckets."
    ]
    skipped = {
        f"without `{summary['step_key']}` in their metadata": lines["without_step"],
        f"with a `{summary['step_key']}` that is not a number": lines["non_numeric_step"],
        "unreadable (not a score-log line)": lines["unreadable"],
        "filtered out by --where": lines["filtered_out"],
    }
    notes += [f"Not plotted: {count} lines {why}." for why, count in skipped.items() if count]
    for name in ("judge_models", "library_versions"):
        if len(summary[name]) > 1:
            notes.append(
                f"Warning: the log mixes {name.replace('_', ' ')} "
                f"({', '.join(summary[name])}): scores are not comparable across them."
            )
    return notes


def print_summary(summary: Mapping[str, Any], console: Console, top: int = DEFAULT_TOP) -> None:
    rows = table_rows(summary, top)
    table = Table(title=f"scribe eval curves: {summary['log']}", title_justify="left")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    hidden = len(summary["prototypes"]) - top
    if hidden > 0:
        console.print(f"  … and {hidden} more prototypes in summary.json")
    for note in _notes(summary):
        console.print(f"  {note}")


def _markdown(rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    return "\n".join(out + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def write_report(out: Path, summary: Mapping[str, Any], plots: Sequence[str]) -> None:
    text = json.dumps(summary, indent=2, allow_nan=False)  # strict JSON: null, never NaN
    (out / "summary.json").write_text(text + "\n", encoding="utf-8")
    parts = [
        f"# scribe eval curves: `{summary['log']}`",
        "",
        "Mean judge score (0-3; logprob mode: the expected score) per step bucket of "
        f"`{summary['step_key']}`. Failed steps are counted as a failure rate, never scored as "
        "0. `first` / `last`: the mean in the first and last bucket with a judged step.",
        "",
        *(f"- {note}" for note in _notes(summary)),
        "",
        _markdown(table_rows(summary, len(summary["prototypes"]))),
        "",
        "## Plots",
        "",
        *(f"![{name}]({name})" for name in plots),
    ]
    (out / "report.md").write_text("\n".join(parts) + "\n", encoding="utf-8")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_series(
    plt: Any, path: Path, summary: Mapping[str, Any], series: Mapping[str, Any], title: str
) -> None:
    xs = [b["x"] for b in summary["buckets"]]
    many = len(series) > 10
    fig, ax = plt.subplots(figsize=(9 if many else 7, 4.2))
    for name, data in series.items():
        ys = [math.nan if b["mean_score"] is None else b["mean_score"] for b in data["buckets"]]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=f"{name} (n={data['n']})")
    ax.set_xlabel(summary["x_label"])
    ax.set_ylabel("mean score (0-3)")
    ax.set_ylim(-0.1, 3.1)
    ax.set_title(title, fontsize=10)
    # Outside the axes, so many curves never hide behind their own legend.
    ax.legend(fontsize=6 if many else 7, ncol=2 if many else 1, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_overall(plt: Any, path: Path, summary: Mapping[str, Any]) -> None:
    xs = [b["x"] for b in summary["buckets"]]
    buckets = summary["overall"]["buckets"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(xs, [math.nan if b["mean_score"] is None else b["mean_score"] for b in buckets],
             marker="o", markersize=3)  # fmt: skip
    top.set_ylabel("mean score (0-3)")
    top.set_ylim(-0.1, 3.1)
    top.set_title("all judged steps", fontsize=10)
    rates = [math.nan if b["failure_rate"] is None else b["failure_rate"] for b in buckets]
    bottom.plot(xs, rates, marker="o", markersize=3, color="#C44E52")
    bottom.set_ylabel("failed steps (rate)")
    bottom.set_ylim(-0.05, 1.05)
    bottom.set_xlabel(summary["x_label"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out: Path, summary: Mapping[str, Any], top: int = DEFAULT_TOP) -> list[str]:
    """The PNGs under `out`; returns their file names. The `top` most frequent prototypes get
    one plot, the rest (if any) a second, so neither holds more curves than it can show."""
    plt = _pyplot()
    _plot_overall(plt, out / "curves_overall.png", summary)
    _plot_series(plt, out / "curves_domains.png", summary, summary["domains"], "per domain")
    names = ["curves_overall.png", "curves_domains.png"]
    prototypes = list(summary["prototypes"].items())
    head, rest = dict(prototypes[:top]), dict(prototypes[top:])
    title = f"the {len(head)} most frequent prototypes"
    _plot_series(plt, out / "curves_prototypes.png", summary, head, title)
    names.append("curves_prototypes.png")
    if rest:
        title = f"the other {len(rest)} prototypes"
        _plot_series(plt, out / "curves_prototypes_rest.png", summary, rest, title)
        names.append("curves_prototypes_rest.png")
    return names


def curves(
    log: Path,
    out: Path,
    *,
    step_key: str = DEFAULT_STEP_KEY,
    bins: int = DEFAULT_BINS,
    top: int = DEFAULT_TOP,
    where: Mapping[str, str] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Read the log, write `out`/summary.json, report.md and the PNGs; print the table."""
    if top < 1:
        raise CurvesError(f"--top must be at least 1 (got {top})")
    if bins < 1:
        raise CurvesError(f"--bins must be at least 1 (got {bins})")
    contents = read_log(log, step_key=step_key, where=where)
    if not contents.points:
        raise CurvesError(
            f"{log}: none of its {contents.lines} lines carries a numeric metadata "
            f"`{step_key}` (send it with each request: docs/score-log.md)"
        )
    summary = summarise(contents, log, step_key=step_key, bins=bins)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(out, summary, top)
    write_report(out, summary, plots)
    if console is not None:
        print_summary(summary, console, top)
    return summary
