"""Turn judgments into the numbers of `summary.json`, per arm, with bootstrap intervals.

Where each number comes from (the report says the same):

* fit-free metrics (step AUROC, Spearman, trajectory AUROC, calibration, consistency) use
  every record;
* fitted ones (three-class agreement, first-error F1) fit their cut points or threshold on the
  records of the `fit` split and are reported on the other split only;
* a failed judgment is counted (`failed`) and left out; a trajectory with a failed or missing
  step is left out of the trajectory-level metrics and counted (`incomplete_trajectories`);
* intervals resample records (all steps of a trajectory together).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scribe_client.protocol import Aggregation
from scribe_service.evaluation import metrics as m
from scribe_service.evaluation.records import Record, Split
from scribe_service.pipeline import aggregate

Line = Mapping[str, Any]


@dataclass(frozen=True)
class Unit:
    """One record with its judgments for one arm, ordered by step."""

    record: Record
    steps: list[Line]
    """Judgments of this record's steps (only those made so far)."""
    n_steps: int
    """How many steps the record has."""

    def labelled(self, reward: Callable[[Line], float] | None = None) -> list[tuple[float, int]]:
        """(reward, human label) of the judged steps that carry a human label; `reward`
        reads a line's reward otherwise than as scored (`judge_reward`)."""
        out = []
        for line in self.steps:
            label = self.label(line)
            if line["status"] == "ok" and label is not None:
                out.append((float(line["reward"]) if reward is None else reward(line), label))
        return out

    def label(self, line: Line) -> int | None:
        index = line["message_index"]
        return None if index is None else self.record.step_labels.get(index)

    def rewards(self) -> list[float] | None:
        """Every step's reward, or None when any step is failed or not judged yet."""
        if len(self.steps) != self.n_steps or any(s["status"] != "ok" for s in self.steps):
            return None
        return [float(s["reward"]) for s in self.steps]


@dataclass(frozen=True)
class Config:
    fit_split: Split
    n_resamples: int = 1000
    seed: int = 0
    aggregation: Aggregation = "mean"

    @property
    def report_split(self) -> Split:
        return "b" if self.fit_split == "a" else "a"


def _boot(units: Sequence[Unit], statistic: Callable[[Sequence[Unit]], float | None],
          size: Callable[[Sequence[Unit]], int], cfg: Config) -> dict[str, Any]:  # fmt: skip
    estimate = m.bootstrap(units, statistic, n_resamples=cfg.n_resamples, seed=cfg.seed, size=size)
    return estimate.as_dict()


def _pairs(
    units: Sequence[Unit], reward: Callable[[Line], float] | None = None
) -> tuple[list[float], list[int]]:
    pairs = [p for u in units for p in u.labelled(reward)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _step_auroc(reward: Callable[[Line], float] | None) -> Callable[[Sequence[Unit]], float | None]:
    def statistic(us: Sequence[Unit]) -> float | None:
        rewards, labels = _pairs(us, reward)
        return m.auroc(rewards, [label == 1 for label in labels])

    return statistic


def _checks_effect(us: Sequence[Unit]) -> float | None:
    """Step AUROC as scored minus from the judge alone, on the same resample (paired)."""
    scored, alone = _step_auroc(None)(us), _step_auroc(judge_reward)(us)
    return None if scored is None or alone is None else scored - alone


def _n_labelled(units: Sequence[Unit]) -> int:
    return sum(len(u.labelled()) for u in units)


def _first_error_position(unit: Unit) -> int | None:
    if unit.record.first_error is None:
        return None
    position: int = next(
        s["step"] for s in unit.steps if s["message_index"] == unit.record.first_error
    )
    return position


def _first_error(units: Sequence[Unit]) -> tuple[list[list[float]], list[int | None]]:
    rewards, truth = [], []
    for unit in units:
        r = unit.rewards()
        if unit.record.first_error_style and r is not None:
            rewards.append(r)
            truth.append(_first_error_position(unit))
    return rewards, truth


def _trajectories(units: Sequence[Unit], cfg: Config) -> tuple[list[float], list[bool]]:
    scores, positive = [], []
    for unit in units:
        r = unit.rewards()
        if r is None or unit.record.final_label is None:
            continue
        process = aggregate.process_reward(list(r), cfg.aggregation)
        if process is not None:
            scores.append(process)
            positive.append(unit.record.final_label == 1)
    return scores, positive


def arm_labels_summary(units: Sequence[Unit], cfg: Config) -> dict[str, Any]:
    fit = [u for u in units if u.record.split == cfg.fit_split]
    report = [u for u in units if u.record.split == cfg.report_split]
    lines = [s for u in units for s in u.steps]
    out: dict[str, Any] = {
        "n": sum(s["status"] == "ok" for s in lines),
        "failed": sum(s["status"] != "ok" for s in lines),
        "not_judged": sum(u.n_steps for u in units) - len(lines),
        "failed_by_error": _count(s["error"] for s in lines if s["status"] != "ok"),
        "incomplete_trajectories": sum(u.rewards() is None for u in units),
        "capped_by_check": capped_count(lines),
    }
    metrics: dict[str, Any] = {}

    def rho(us: Sequence[Unit]) -> float | None:
        rewards, labels = _pairs(us)
        return m.spearman(rewards, labels)

    metrics["step_auroc"] = _boot(units, _step_auroc(None), _n_labelled, cfg)
    # What the deterministic checks did to agreement with the labels: the same judgments
    # before their caps, and the paired difference (0 where no check fired).
    out["judge_alone"] = {
        "step_auroc": _boot(units, _step_auroc(judge_reward), _n_labelled, cfg),
        "checks_effect": _boot(units, _checks_effect, _n_labelled, cfg),
    }
    metrics["spearman"] = _boot(units, rho, _n_labelled, cfg)
    cuts = m.fit_cut_points(*_pairs(fit))
    # An infinite cut point means an empty class; JSON has no infinity, so it is null.
    out["cut_points"] = (
        None if cuts is None else {"low": _finite(cuts.low), "high": _finite(cuts.high)}
    )

    def agree(us: Sequence[Unit]) -> float | None:
        rewards, labels = _pairs(us)
        return None if cuts is None else m.agreement([cuts.label(r) for r in rewards], labels)

    metrics["agreement3"] = _boot(report, agree, _n_labelled, cfg)

    fit_rewards, fit_truth = _first_error(fit)
    threshold = m.fit_first_error_threshold(fit_rewards, fit_truth)
    out["first_error_threshold"] = None if threshold is None else _finite(threshold)

    def first_error_f1(us: Sequence[Unit]) -> float | None:
        rewards, truth = _first_error(us)
        if threshold is None:
            return None
        predicted = [m.predicted_first_error(r, threshold) for r in rewards]
        return m.first_error_f1(predicted, truth)[2]

    if any(u.record.first_error_style for u in units):
        metrics["first_error_f1"] = _boot(
            report, first_error_f1, lambda us: len(_first_error(us)[0]), cfg
        )

    def trajectory_auroc(us: Sequence[Unit]) -> float | None:
        return m.auroc(*_trajectories(us, cfg))

    metrics["trajectory_auroc"] = _boot(
        units, trajectory_auroc, lambda us: len(_trajectories(us, cfg)[0]), cfg
    )
    out["metrics"] = metrics
    out["calibration"] = {
        str(label): _boot(units, _mean_reward(label), _count_label(label), cfg)
        for label in (-1, 0, 1)
    }
    out["per_prototype"] = per_prototype(units, report, cuts)
    out["score_by_label"] = {
        str(label): [r for r, lab in zip(*_pairs(units), strict=True) if lab == label]
        for label in (-1, 0, 1)
    }
    return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def capped_count(lines: Iterable[Line]) -> int:
    """Judged steps whose score a deterministic check capped below the judge's own."""
    return sum(bool(line.get("capped_by_check")) for line in lines if line["status"] == "ok")


def judge_reward(line: Line) -> float:
    """A judged step's reward from the judge alone, before the checks capped it (lines from
    before the `judge_*` fields count as uncapped)."""
    if not line.get("capped_by_check"):
        return float(line["reward"])
    expected = line.get("judge_expected_score")
    return float(line["judge_score"] if expected is None else expected) / aggregate.MAX_SCORE


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for value in values:
        counts[str(value)] += 1
    return dict(counts)


def _mean_reward(label: int) -> Callable[[Sequence[Unit]], float | None]:
    def statistic(us: Sequence[Unit]) -> float | None:
        return m.mean([r for r, lab in zip(*_pairs(us), strict=True) if lab == label])

    return statistic


def _count_label(label: int) -> Callable[[Sequence[Unit]], int]:
    return lambda us: sum(lab == label for lab in _pairs(us)[1])


def per_prototype(
    units: Sequence[Unit], report: Sequence[Unit], cuts: m.CutPoints | None
) -> dict[str, Any]:
    """Which rubrics are weak: by the prototype each step was routed to."""
    groups: dict[str, list[tuple[float, int, bool]]] = defaultdict(list)
    report_ids = {u.record.id for u in report}
    for unit in units:
        for line in unit.steps:
            label = unit.label(line)
            if line["status"] == "ok" and label is not None:
                in_report = unit.record.id in report_ids
                groups[line["prototype_id"]].append((float(line["reward"]), label, in_report))
    out = {}
    for prototype, rows in sorted(groups.items()):
        reported = [(r, lab) for r, lab, rep in rows if rep]
        out[prototype] = {
            "count": len(rows),
            "agreement": None
            if cuts is None or not reported
            else m.agreement([cuts.label(r) for r, _ in reported], [lab for _, lab in reported]),
            "agreement_n": len(reported),
            "mean_score_by_label": {
                str(label): m.mean([3 * r for r, lab, _ in rows if lab == label])
                for label in (-1, 0, 1)
            },
        }
    return out


MAJORITY = "majority label of the fit split (no judge)"
"""The reference row that guesses one label for every step: an arm whose fitted cut points
separate nothing lands exactly here, and on data that is mostly +1 (ProcessBench before its
first error) this row is high; an arm's agreement means something only above it."""


def majority_label(records: Sequence[Record]) -> int | None:
    """The most common human step label (the larger label on a tie); None without labels."""
    counts = Counter(label for r in records for label in r.step_labels.values())
    return max(counts, key=lambda label: (counts[label], label)) if counts else None


def reference_rows(records: Sequence[Record], cfg: Config) -> dict[str, Any]:
    """Agreement with the human labels on the reported split's steps of a constant guess (the
    fit split's majority label, `MAJORITY`) and of each `llm_labels` set: the benchmark's own
    LLM annotators, on the same steps as our agreement."""
    report = [r for r in records if r.split == cfg.report_split]
    names = sorted({name for r in records for name in r.llm_labels})
    constant = majority_label([r for r in records if r.split == cfg.fit_split])

    def rows(name: str, rs: Sequence[Record]) -> tuple[list[int], list[int]]:
        predicted, gold = [], []
        for record in rs:
            for index, label in record.step_labels.items():
                guess = constant if name == MAJORITY else record.llm_labels.get(name, {}).get(index)
                if guess is not None:
                    predicted.append(guess)
                    gold.append(label)
        return predicted, gold

    def estimate(name: str) -> dict[str, Any]:
        def statistic(rs: Sequence[Record]) -> float | None:
            return m.agreement(*rows(name, rs))

        def size(rs: Sequence[Record]) -> int:
            return len(rows(name, rs)[0])

        boot = m.bootstrap(report, statistic, n_resamples=cfg.n_resamples, seed=cfg.seed, size=size)
        return boot.as_dict()

    return {name: estimate(name) for name in ([MAJORITY] if constant is not None else []) + names}


def build_units(
    records: Sequence[Record],
    step_counts: Mapping[str, int],
    lines: Sequence[Line],
    arm: str,
    kind: str,
) -> list[Unit]:
    by_record: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        if line["arm"] == arm and line["kind"] == kind:
            by_record[line["record_id"]].append(line)
    return [
        Unit(r, sorted(by_record.get(r.id, []), key=lambda s: s["step"]), step_counts[r.id])
        for r in records
    ]


# --- consistency ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Repeats:
    record: Record
    steps: dict[int, list[Line]]
    """Step → its repeated judgments."""

    def ok(self, step: int, field: str) -> list[Any]:
        return [line[field] for line in self.steps[step] if line["status"] == "ok"]


def _repeat_units(records: Sequence[Record], lines: Sequence[Line], arm: str,
                  kind: str) -> list[Repeats]:  # fmt: skip
    grouped: dict[str, dict[int, list[Line]]] = defaultdict(lambda: defaultdict(list))
    for line in lines:
        if line["arm"] == arm and line["kind"] == kind:
            grouped[line["record_id"]][line["step"]].append(line)
    return [Repeats(r, dict(grouped.get(r.id, {}))) for r in records]


def _per_step(units: Sequence[Repeats], field: str,
              fn: Callable[[list[Any]], float | None]) -> list[float]:  # fmt: skip
    values = []
    for unit in units:
        for step in unit.steps:
            scores = unit.ok(step, field)
            value = fn(scores) if len(scores) >= 2 else None
            if value is not None:
                values.append(value)
    return values


def cross_instance(entries: Sequence[tuple[str, str, int, int]]) -> tuple[float | None, float | None, int]:  # fmt: skip  # noqa: E501
    """(exact agreement, mean |score gap|, pairs) over pairs of steps from different tasks
    with the same prototype and human label. `entries`: (task, prototype, label, score).

    Counted, not enumerated: per group a task x score count matrix gives the number of
    cross-task pairs with each pair of scores."""
    groups: dict[tuple[str, int], dict[str, np.ndarray]] = defaultdict(dict)
    for task, prototype, label, score in entries:
        counts = groups[(prototype, label)].setdefault(task, np.zeros(4))
        counts[score] += 1
    pairs = equal = gap = 0.0
    for tasks in groups.values():
        matrix = np.stack(list(tasks.values()))  # tasks x scores
        totals = matrix.sum(axis=0)
        # Ordered pairs (x, y) from different tasks with scores (s, t).
        ordered = np.outer(totals, totals) - matrix.T @ matrix
        pairs += ordered.sum() / 2
        equal += np.trace(ordered) / 2
        distance = np.abs(np.subtract.outer(np.arange(4), np.arange(4)))
        gap += (ordered * distance).sum() / 2
    if pairs == 0:
        return None, None, 0
    return equal / pairs, gap / pairs, int(pairs)


def _entries(units: Sequence[Repeats], routes: Mapping[tuple[str, int], str]) -> list[tuple[str, str, int, int]]:  # fmt: skip  # noqa: E501
    out = []
    for unit in units:
        for step, lines in unit.steps.items():
            index = lines[0]["message_index"]
            label = None if index is None else unit.record.step_labels.get(index)
            score = m.modal_score(unit.ok(step, "score"))
            if label is not None and score is not None:
                out.append((unit.record.task, routes[(unit.record.id, step)], label, score))
    return out


def arm_consistency_summary(
    records: Sequence[Record],
    lines: Sequence[Line],
    arm: str,
    routes: Mapping[tuple[str, int], str],
    cfg: Config,
) -> dict[str, Any]:
    repeats = _repeat_units(records, lines, arm, "repeat")
    logprob = _repeat_units(records, lines, arm, "logprob")
    mine = [line for line in lines if line["arm"] == arm and line["kind"] in ("repeat", "logprob")]

    def steps_with_two(us: Sequence[Repeats], field: str) -> int:
        return len(_per_step(us, field, lambda _: 0.0))

    def stat(field: str, fn: Callable[[list[Any]], float | None]) -> Callable[..., float | None]:
        return lambda us: m.mean(_per_step(us, field, fn))

    def pair_stat(index: int) -> Callable[[Sequence[Repeats]], float | None]:
        return lambda us: cross_instance(_entries(us, routes))[index]

    boot = {"n_resamples": cfg.n_resamples, "seed": cfg.seed}
    out: dict[str, Any] = {
        "n": sum(line["status"] == "ok" for line in mine),
        "failed": sum(line["status"] != "ok" for line in mine),
        "metrics": {
            "modal_agreement": m.bootstrap(
                repeats,
                stat("score", m.modal_agreement),
                size=lambda us: steps_with_two(us, "score"),
                **boot,
            ).as_dict(),
            "score_std": m.bootstrap(
                repeats,
                stat("score", m.std),
                size=lambda us: steps_with_two(us, "score"),
                **boot,
            ).as_dict(),
            "logprob_expected_std": m.bootstrap(
                logprob,
                stat("expected_score", m.std),
                size=lambda us: steps_with_two(us, "expected_score"),
                **boot,
            ).as_dict(),
            "cross_instance_agreement": m.bootstrap(
                repeats,
                pair_stat(0),
                size=lambda us: cross_instance(_entries(us, routes))[2],
                **boot,
            ).as_dict(),
            "cross_instance_gap": m.bootstrap(
                repeats,
                pair_stat(1),
                size=lambda us: cross_instance(_entries(us, routes))[2],
                **boot,
            ).as_dict(),
        },  # fmt: skip
        "histograms": {
            "modal_agreement": _per_step(repeats, "score", m.modal_agreement),
            "score_std": _per_step(repeats, "score", m.std),
            "logprob_expected_std": _per_step(logprob, "expected_score", m.std),
        },
    }
    logprob_std = out["histograms"]["logprob_expected_std"]
    out["logprob_max_std"] = max(logprob_std) if logprob_std else None
    return out
