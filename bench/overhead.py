"""Where the service's own time goes per judged step, and whether a change cut it (issue 14).

    .venv/bin/python bench/overhead.py profile [--groups 8] [--top 20] [--embedding-backend onnx]
    .venv/bin/python bench/overhead.py compare --before DIR [--rounds 4] [--embedding-backend onnx]
    .venv/bin/python bench/overhead.py compare --uvicorn-before asyncio,h11 \
        --uvicorn-after uvloop,httptools

Both run the speed suite's GRPO-like workload (bench/suite.py: groups of 8 rollouts sharing
their first steps, 64 requests in flight) against `scribe serve` judged by the suite's
zero-latency stand-in, so what is measured is the service around its judge.

`profile` runs the service under cProfile, switched on for the measured workload only (the
warm-up and the start are left out), and prints the top functions by own and by cumulative
time, in ms per judged step. cProfile sees the event loop's thread: the embedder's encode runs
in a worker thread and is timed by its stage metric instead. The profiler slows every call
it sees, so the absolute figures are inflated; the ranking is what it is for.

`compare` runs two services side by side, one importing `service/` and `client/` from
`--before DIR` (a copy of the tree before a change: `mkdir DIR && git archive HEAD service
client | tar -x -C DIR`), one from this tree, and sends each round
of distinct groups to both, in alternating order, then the same sequential 10-step requests
to both, interleaved. This machine is noisy (2 cores, other jobs): the ratio after / before
of each round, taken minutes apart at most, is the figure; the milliseconds are context.
`--uvicorn-before` / `--uvicorn-after LOOP,HTTP` start that side's service with uvicorn's
event loop and HTTP parser forced (`scribe serve` leaves both to uvicorn's "auto", which
takes uvloop and httptools when they are installed); without `--before` both sides run this
tree, so what differs is the server alone.
Service CPU per step (from /proc), and that of its event loop's thread alone, are reported
beside wall time: load on the machine inflates wall time far more than it inflates CPU time,
and the embedder's encodes (other threads) are most of the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import os
import pstats
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from suite import (  # noqa: E402
    CONCURRENCY,
    DEFAULT_DATA,
    SERVE_COMMAND,
    SOURCES,
    Record,
    Service,
    between,
    cpu_seconds,
    grpo_groups,
    instant_judge,
    percentile,
    read_records,
    score_all,
    scrape,
    scribe_serve,
    sequential_ms,
    ten_step_requests,
)

GROUPS_PER_ROUND = 8


@dataclass(frozen=True)
class Round:
    """One GRPO round on one service, in ms per judged step (stages: ms per observation)."""

    wall: float
    cpu: float
    loop_cpu: float
    stages: dict[str, float]


def workloads(
    records: dict[str, list[Record]], rounds: int, per_round: int
) -> tuple[list[Record], list[list[Record]]]:
    """A warm-up (one group of each corpus) and `rounds` lists of rollouts, each of
    `per_round` distinct groups alternating between the corpora, none repeated: a round never
    meets the judgment cache's entries of another."""
    half = per_round // 2
    hotpot = grpo_groups(records[SOURCES[0]], rounds * half + 1)
    maths = grpo_groups(records[SOURCES[1]], rounds * half + 1)
    warm_up = hotpot.pop() + maths.pop()
    out = []
    for r in range(rounds):
        pairs = zip(
            hotpot[r * half : (r + 1) * half], maths[r * half : (r + 1) * half], strict=True
        )
        out.append([rollout for pair in pairs for group in pair for rollout in group])
    return warm_up, out


# --- profile -------------------------------------------------------------------------------


def serve_profiled(stats: Path) -> None:
    """The service, with cProfile on between SIGUSR1 and SIGUSR2 (which writes `stats`)."""
    # CPU time of this thread, not wall time: on a loaded machine a call that was descheduled
    # would otherwise be charged the time other processes ran.
    profiler = cProfile.Profile(time.thread_time)

    def start(*_: object) -> None:
        profiler.enable()

    def finish(*_: object) -> None:
        profiler.disable()
        partial = stats.with_suffix(".partial")
        profiler.dump_stats(partial)
        partial.rename(stats)  # whole, once it appears

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, finish)
    from scribe_service.cli import main

    sys.exit(main(["serve"]))


def uvicorn_choice(text: str) -> tuple[str, str]:
    """`LOOP,HTTP` as uvicorn names them, e.g. `asyncio,h11` or `uvloop,httptools`."""
    loop, _, http = text.partition(",")
    if not loop or not http:
        raise argparse.ArgumentTypeError(f"expected LOOP,HTTP (e.g. asyncio,h11), got {text!r}")
    return loop, http


def force_uvicorn(loop: str, http: str) -> None:
    """Make every later `uvicorn.run` use this event loop and HTTP parser: `scribe serve`
    does not name them, so this is the one place they are set."""
    import uvicorn

    uvicorn.run = functools.partial(uvicorn.run, loop=loop, http=http)


def serve_with(loop: str, http: str) -> None:
    """The service, with uvicorn's event loop and HTTP parser forced."""
    force_uvicorn(loop, http)
    from scribe_service.cli import main

    sys.exit(main(["serve"]))


def serve_command(uvicorn: tuple[str, str] | None) -> tuple[str, ...]:
    """What `scribe_serve` runs (after the interpreter) for a side of a comparison: `scribe
    serve`, or this script serving it with uvicorn's loop and parser forced."""
    if uvicorn is None:
        return SERVE_COMMAND
    return (str(Path(__file__).resolve()), "--serve-uvicorn", ",".join(uvicorn))


def top(stats: pstats.Stats, key: int, steps: int, count: int) -> list[str]:
    """`count` rows by own time (key 2) or cumulative time (key 3), per judged step."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = sorted(table.items(), key=lambda item: item[1][key], reverse=True)[:count]
    lines = [f"{'own ms':>8} {'cum ms':>8} {'calls':>7}  function   (per judged step)"]
    for (file, line, name), (_, calls, own, cum, _) in rows:
        where = f"{Path(file).name}:{line}" if line else file
        lines.append(
            f"{1000 * own / steps:8.3f} {1000 * cum / steps:8.3f} {calls / steps:7.2f}  "
            f"{name} ({where})"
        )
    return lines


def profile(
    records: dict[str, list[Record]],
    groups: int,
    count: int,
    backend: str | None,
    save: Path | None = None,
    singles: int = 0,
) -> None:
    """Profile the GRPO-like workload, or with `singles` that many sequential 10-step
    requests."""
    warm_up, [measured] = workloads(records, 1, groups)
    requests = ten_step_requests(records[SOURCES[1]], singles + 2) if singles else []
    with tempfile.TemporaryDirectory() as tmp, instant_judge() as judge_url:
        stats_path = Path(tmp) / "service.prof"
        command = (str(Path(__file__).resolve()), "--serve-profiled", str(stats_path))
        with scribe_serve(judge_url, Path(tmp) / "serve.log", backend, command=command) as service:
            asyncio.run(score_all(service.url, warm_up, CONCURRENCY))
            sequential_ms(service.url, requests[:2])
            counters, cpu_before = scrape(service.url), cpu_seconds(service.process.pid)
            os.kill(service.process.pid, signal.SIGUSR1)
            if singles:
                wall = sum(sequential_ms(service.url, requests[2:])) / 1000
                steps = 10 * singles
                measured = requests[2:]
            else:
                wall, steps = asyncio.run(score_all(service.url, measured, CONCURRENCY))
            os.kill(service.process.pid, signal.SIGUSR2)
            cpu = cpu_seconds(service.process.pid) - cpu_before
            stages = between(counters, scrape(service.url))["stage_mean_ms"]
            deadline = time.monotonic() + 60
            while not stats_path.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            stats = pstats.Stats(str(stats_path))
            if save is not None:
                stats.dump_stats(save)
    print(
        f"{len(measured)} requests, {steps} steps; wall {1000 * wall / steps:.2f} ms/step, "
        f"service CPU {1000 * cpu / steps:.2f} ms/step (under the profiler)"
    )
    print(f"stage means, ms (per request: segment embed route aggregate; per step: rest): {stages}")
    print("\nby own time:")
    print("\n".join(top(stats, 2, steps, count)))
    print("\nby cumulative time:")
    print("\n".join(top(stats, 3, steps, count)))


# --- compare -------------------------------------------------------------------------------


@contextlib.contextmanager
def two_services(
    judge_url: str,
    before: Path | None,
    backend: str | None,
    tmp: Path,
    uvicorn: tuple[tuple[str, str] | None, tuple[str, str] | None] = (None, None),
) -> Iterator[tuple[Service, Service]]:
    """The before and after services; `before` None: both from this tree (then `uvicorn`,
    each side's forced loop and parser, is what differs)."""
    old_env = {}
    if before is not None:
        tree = os.pathsep.join(str(before / part) for part in ("service", "client"))
        old_env = {"PYTHONPATH": tree + os.pathsep + os.environ.get("PYTHONPATH", "")}
    commands = [serve_command(side) for side in uvicorn]
    with (
        scribe_serve(
            judge_url, tmp / "before.log", backend, extra_env=old_env, command=commands[0]
        ) as old,
        scribe_serve(judge_url, tmp / "after.log", backend, command=commands[1]) as new,
    ):
        yield old, new


def loop_cpu_seconds(pid: int) -> float:
    """CPU time of a process's main thread, which runs its event loop (the embedder's encodes
    and the judge engines run in other threads)."""
    return cpu_seconds(pid, thread=pid)


def grpo_round(service: Service, rollouts: Sequence[Record]) -> Round:
    """One round's figures per judged step, and its stage means (ms)."""
    pid = service.process.pid
    counters, cpu, loop = scrape(service.url), cpu_seconds(pid), loop_cpu_seconds(pid)
    wall, steps = asyncio.run(score_all(service.url, rollouts, CONCURRENCY))
    cpu, loop = cpu_seconds(pid) - cpu, loop_cpu_seconds(pid) - loop
    stages = between(counters, scrape(service.url))["stage_mean_ms"]
    return Round(1000 * wall / steps, 1000 * cpu / steps, 1000 * loop / steps, stages)


def compare(
    records: dict[str, list[Record]],
    before: Path | None,
    rounds: int,
    singles: int,
    backend: str | None,
    uvicorn: tuple[tuple[str, str] | None, tuple[str, str] | None] = (None, None),
) -> None:
    warm_up, measured = workloads(records, rounds, GROUPS_PER_ROUND)
    requests = ten_step_requests(records[SOURCES[1]], singles + 2)
    with (
        tempfile.TemporaryDirectory() as tmp,
        instant_judge() as judge_url,
        two_services(judge_url, before, backend, Path(tmp), uvicorn) as (old, new),
    ):
        for service in (old, new):
            asyncio.run(score_all(service.url, warm_up, CONCURRENCY))
            sequential_ms(service.url, requests[:2])
        figures: dict[str, list[Round]] = {"before": [], "after": []}
        for number, rollouts in enumerate(measured):
            order = [("before", old), ("after", new)]
            for name, service in order if number % 2 == 0 else order[::-1]:
                figures[name].append(grpo_round(service, rollouts))
        single: dict[str, list[float]] = {"before": [], "after": []}
        for number, request in enumerate(requests[2:]):
            order = [("before", old), ("after", new)]
            for name, service in order if number % 2 == 0 else order[::-1]:
                single[name].extend(sequential_ms(service.url, [request]))
    print("ms per judged step, before / after (ratio); loop: the event loop's thread alone")
    ratios: dict[str, list[float]] = {"wall": [], "cpu": [], "loop_cpu": []}
    for number, (b, a) in enumerate(zip(figures["before"], figures["after"], strict=True)):
        cells = []
        for key, values in ratios.items():
            values.append(getattr(a, key) / getattr(b, key))
            cells.append(
                f"{key} {getattr(b, key):6.2f} / {getattr(a, key):6.2f} ({values[-1]:.2f})"
            )
        print(f"round {number}: " + ";  ".join(cells))
    print(
        "median ratio after/before: "
        + ", ".join(f"{key} {statistics.median(values):.2f}" for key, values in ratios.items())
    )
    for name in ("before", "after"):
        stages = {
            stage: round(statistics.median(r.stages.get(stage, 0.0) for r in figures[name]), 2)
            for stage in figures[name][0].stages
        }
        print(f"GRPO stage means (median of rounds, ms), {name}: {stages}")
    for name in ("before", "after"):
        times = single[name]
        print(
            f"single 10-step request, {name}: p50 {percentile(times, 50):.1f} ms, "
            f"p99 {percentile(times, 99):.1f} ms ({len(times)} requests)"
        )
    per_request = [a / b for a, b in zip(single["after"], single["before"], strict=True)]
    print(f"single request median ratio after/before: {statistics.median(per_request):.2f}")
    print(f"load average at end: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-profiled", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-uvicorn", type=uvicorn_choice, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command")
    for name in ("profile", "compare"):
        sub = commands.add_parser(name)
        sub.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dev JSONL folder")
        sub.add_argument("--embedding-backend", choices=("torch", "onnx", "onnx-int8"))
    commands.choices["profile"].add_argument("--groups", type=int, default=GROUPS_PER_ROUND)
    commands.choices["profile"].add_argument("--top", type=int, default=20)
    commands.choices["profile"].add_argument("--save", type=Path, help="keep the pstats file")
    commands.choices["profile"].add_argument(
        "--singles", type=int, default=0, help="profile N sequential 10-step requests instead"
    )
    commands.choices["compare"].add_argument("--before", type=Path)
    for side in ("before", "after"):
        commands.choices["compare"].add_argument(
            f"--uvicorn-{side}", type=uvicorn_choice, metavar="LOOP,HTTP"
        )
    commands.choices["compare"].add_argument("--rounds", type=int, default=4)
    commands.choices["compare"].add_argument("--singles", type=int, default=20)
    args = parser.parse_args()
    if args.serve_profiled is not None:
        serve_profiled(args.serve_profiled)
        return
    if args.serve_uvicorn is not None:
        serve_with(*args.serve_uvicorn)
        return
    if args.command is None:
        parser.error("profile or compare")
    records = read_records(args.data)
    if args.command == "profile":
        profile(records, args.groups, args.top, args.embedding_backend, args.save, args.singles)
    else:
        sides = (args.uvicorn_before, args.uvicorn_after)
        if args.before is None and sides == (None, None):
            parser.error("compare needs --before DIR, or --uvicorn-before / --uvicorn-after")
        compare(records, args.before, args.rounds, args.singles, args.embedding_backend, sides)


if __name__ == "__main__":
    main()
