"""`scribe library refresh`: new prototypes from the miss log, the base library left as it is.

    miss log (LOG.N … LOG.1, LOG) ─read→ steps ─route with the base→ still missed
    ─embed→ distinct subgoals ─cluster→ clusters
    clusters close to a base prototype: reported, not distilled (see below)
    other clusters ─distil→ new prototypes ─write→ base files + new files ─publish→ DIR2

The stages are the build's (`build.py`); what differs is the input and the merge. The input is
the miss log's lines (docs/reload.md): each line is one step the serving library routed to the
fallback, with its subgoal and an excerpt of its content. A line whose subgoal the base
library now routes to a prototype (the log may be older than the base) is no longer a miss
and is left out of clustering.

Refresh never edits a base prototype: every base file is copied byte for byte, so a library
under training only ever gains rubrics and a reward already given stays reproducible. A
cluster whose centroid is close to a base prototype (`merge_threshold`, as for a build)
therefore adds nothing: neither exemplars to that prototype (a build with `--base` would) nor
a near-duplicate of it. The report names it and its nearest prototype, for a person to extend
by hand or with `scribe library build --base`.

With `--llm-subgoals` the judge writes the subgoal of each still-missed step whose subgoal was
derived, and the clusters are cut on those, as in a build (`build.py`): the exemplars, the
closeness to a base prototype and coverage stay on the logged subgoals, the ones the service
routes.

The fallback judge's score on a missed step is not used as a label: the distiller presents
labelled members as steps people judged, and a generic rubric's score is not that.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scribe_service.library import Library, LibraryError, Prototype, load_library
from scribe_service.library_build.build import (
    EXAMPLES_SHOWN,
    BuildResult,
    Progress,
    StageOptions,
    Subgoals,
    base_files,
    cluster_brief,
    cluster_entry,
    coverage,
    coverage_report,
    embed_subgoals,
    judge_subgoals,
    leftovers_report,
    served_cluster,
    unique_id,
)
from scribe_service.library_build.cluster import Cluster, cluster
from scribe_service.library_build.decompose import BuildStep
from scribe_service.library_build.distil import (
    DistilFailure,
    Distilled,
    distil,
    slug,
)
from scribe_service.library_build.errors import BuildError
from scribe_service.library_build.merge import nearest_prototypes
from scribe_service.library_build.write import discard, manifest_toml, publish, stage_library
from scribe_service.pipeline.backends.base import JudgeBackend, Sampling
from scribe_service.pipeline.embed import Embedder
from scribe_service.pipeline.segment import Step

MIN_EXEMPLARS = 5
SOURCE = "miss-log"


@dataclass(frozen=True, kw_only=True)
class RefreshOptions(StageOptions):
    misses: Path
    base: Path
    out: Path

    def check(self) -> None:
        self.check_stages()
        if self.out.exists():
            raise BuildError(f"{self.out}: already exists; a refresh writes a new directory")
        if not self.base.is_dir():
            raise BuildError(f"{self.base}: no such library directory")


@dataclass(frozen=True)
class Misses:
    files: tuple[Path, ...]
    """Oldest first."""
    steps: list[BuildStep]
    lines: int
    skipped: list[str]
    """Why each unusable line was skipped (`file:line: reason`)."""
    versions: dict[str, int]
    """Lines per library version that missed them."""


def miss_files(log: Path) -> list[Path]:
    """The log and its rotated files, oldest first: `LOG.N` … `LOG.1`, then `LOG` (the
    rotation of `logging.handlers.RotatingFileHandler`, which the miss log uses)."""
    rotated: list[tuple[int, Path]] = []
    for path in log.parent.glob(f"{log.name}.*"):
        suffix = path.name[len(log.name) + 1 :]
        if suffix.isdigit() and path.is_file():
            rotated.append((int(suffix), path))
    files = [p for _, p in sorted(rotated, reverse=True)]
    return [*files, log] if log.is_file() else files


def _miss_step(raw: object, where: str) -> tuple[BuildStep, str] | str:
    """One line as a build step and the library version that missed it, or why it is unusable."""
    if not isinstance(raw, dict):
        return "not a JSON object"
    subgoal, content = raw.get("subgoal"), raw.get("content", "")
    if not isinstance(subgoal, str) or not subgoal.strip():
        return "no subgoal"
    if not isinstance(content, str):
        return "content is not a string"
    index, message_index = raw.get("step", 0), raw.get("message_index")
    source = raw.get("subgoal_source", "given")
    step = Step(
        index=index if isinstance(index, int) else 0,
        content=content,
        subgoal=subgoal.strip(),
        subgoal_source=source if source in ("given", "marker", "derived") else "given",
        message_index=message_index if isinstance(message_index, int) else None,
    )
    request = raw.get("request_id")
    version = raw.get("library_version")
    record_id = request if isinstance(request, str) and request else where
    return BuildStep(record_id, SOURCE, step, None), version if isinstance(version, str) else "?"


def read_misses(log: Path) -> Misses:
    """Every usable line of the miss log and its rotated files. A line that is not JSON or has
    no subgoal (a line cut short when the service stopped) is skipped and reported."""
    files = miss_files(log)
    if not files:
        raise BuildError(f"{log}: no such miss log (nor rotated files {log.name}.1, …)")
    steps: list[BuildStep] = []
    skipped: list[str] = []
    versions: dict[str, int] = {}
    lines = 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise BuildError(f"{path}: cannot read: {exc}") from exc
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            lines += 1
            try:
                parsed = _miss_step(json.loads(line), f"{path.name}:{number}")
            except json.JSONDecodeError:
                parsed = "not JSON"
            if isinstance(parsed, str):
                skipped.append(f"{path.name}:{number}: {parsed}")
                continue
            step, version = parsed
            steps.append(step)
            versions[version] = versions.get(version, 0) + 1
    return Misses(tuple(files), steps, lines, skipped, versions)


def usable_misses(log: Path) -> Misses:
    """`read_misses`, refusing a log with no usable line (BuildError, naming the reasons)."""
    misses = read_misses(log)
    if not misses.steps:
        reasons = "; ".join(misses.skipped[:3]) or "the files are empty"
        raise BuildError(
            f"{log}: no usable miss lines in {len(misses.files)} file(s) "
            f"({misses.lines} line(s); {reasons})"
        )
    return misses


def misses_digest(files: Sequence[Path]) -> str:
    """The sha256 of the log files, oldest first, as one stream."""
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _close_to_base(
    kept: Sequence[Cluster],
    subgoals: Subgoals,
    served: Subgoals,
    base: Library,
    embedder: Embedder,
) -> list[tuple[str, float] | None]:
    """Per cluster, the base prototype owning the exemplar nearest its centroid (of the logged
    subgoals of its steps, the ones the service routes) and how close."""
    routable = base.routable()
    if not kept or not routable:
        return [None] * len(kept)
    owners = [p.id for p in routable for _ in p.exemplars]
    exemplars = embedder.encode([e for p in routable for e in p.exemplars])
    centroids = np.stack(
        [served_cluster(g, subgoals, served).centroid(served.vectors) for g in kept]
    )
    return [
        None if m is None else (m.prototype_id, m.similarity)
        for m in nearest_prototypes(centroids, exemplars, owners)
    ]


async def refresh_library(
    options: RefreshOptions,
    *,
    backend: JudgeBackend,
    embedder: Embedder,
    min_similarity: float,
    misses: Misses | None = None,
    progress: Progress = lambda _: None,
) -> BuildResult:
    """Write `options.out`: the base library, byte for byte, plus the prototypes distilled
    from the misses it still does not cover. `misses`: the log as `usable_misses` read it
    (the command line reads it before loading any model), else read here."""
    options.check()
    started = time.monotonic()
    try:
        base = load_library(options.base)
    except LibraryError as exc:
        raise BuildError(f"base library: {exc}") from exc
    misses = misses or usable_misses(options.misses)
    all_steps = misses.steps
    progress(f"{len(all_steps)} missed steps in {len(misses.files)} file(s); embedding")
    every = embed_subgoals(all_steps, embedder)
    before = coverage(base, embedder, all_steps, every.vectors[every.rows], min_similarity)
    steps = [s for s, route in zip(all_steps, before, strict=True) if route is None]
    if not steps:
        raise BuildError(
            f"{options.misses}: the base library already routes all {len(all_steps)} "
            "missed steps to a prototype; nothing to refresh"
        )
    if options.llm_subgoals:
        progress(f"{len(steps)} steps still missed; the judge writes their subgoals")
    steps, written = await judge_subgoals(backend, steps, options, progress)
    served = embed_subgoals(steps, embedder)
    subgoals = embed_subgoals(steps, embedder, llm=True) if options.llm_subgoals else served
    clustering = cluster(subgoals.vectors, threshold=options.threshold, min_size=options.min_size)
    keys = [f"cluster_{i}" for i in range(len(clustering.kept))]
    entries = [
        cluster_entry(k, g, subgoals, steps) for k, g in zip(keys, clustering.kept, strict=True)
    ]
    progress(
        f"{len(subgoals.texts)} distinct missed subgoals → {len(clustering.kept)} clusters "
        f"({len(clustering.absorbed)} small groups absorbed, {len(clustering.dropped)} dropped)"
    )

    near = _close_to_base(clustering.kept, subgoals, served, base, embedder)
    close: list[dict[str, Any]] = []
    sampling = Sampling(temperature=0.0, max_tokens=options.max_tokens, seed=options.seed)
    taken = set(base.prototypes)
    built: list[Prototype] = []
    failed: list[DistilFailure] = []
    for i, group in enumerate(clustering.kept):
        match = near[i]
        if match is not None and match[1] >= options.merge_threshold:
            entries[i]["outcome"] = (
                f"close to {match[0]} (sim {match[1]}): not distilled; refresh leaves base "
                "prototypes untouched"
            )
            close.append({"key": keys[i], "prototype_id": match[0], "similarity": match[1]})
            continue
        brief = cluster_brief(keys[i], group, subgoals, steps, options.max_exemplars, served)
        progress(f"distilling {brief.key} ({i + 1}/{len(clustering.kept)}, {brief.steps} steps)")
        outcome = await distil(
            backend,
            brief,
            sampling=sampling,
            max_attempts=options.max_attempts,
            timeout=options.timeout,
            limits=options.limits,
        )
        if isinstance(outcome, Distilled):
            ident = unique_id(slug(outcome.prototype.name), taken)
            built.append(outcome.prototype.model_copy(update={"id": ident}))
            entries[i]["outcome"] = f"built {ident} ({outcome.attempts} attempt(s))"
            entries[i]["prototype_id"] = ident
            if outcome.leaks:
                entries[i]["outcome"] += "; check instance details: " + ", ".join(outcome.leaks)
                entries[i]["leaks"] = list(outcome.leaks)
        else:
            failed.append(outcome)
            entries[i]["outcome"] = f"failed after {outcome.attempts} attempt(s)"

    staging = stage_library(
        options.out,
        prototypes=built,
        copied=base_files(options.base),
        templates=options.base / "templates",
    )
    try:
        try:
            library = load_library(staging)
        except LibraryError as exc:  # every distilled prototype was validated: a bug if so
            raise BuildError(f"the refreshed library does not load: {exc}") from exc
        after = coverage(library, embedder, all_steps, every.vectors[every.rows], min_similarity)
        built_ids = {p.id for p in built}
        digest = misses_digest(misses.files)
        parameters = _parameters(options)
        report: dict[str, Any] = {
            "mode": "refresh",
            "data": str(options.misses),
            "data_sha256": digest,
            "library_version": library.version,
            "base_version": base.version,
            "judge_model": backend.model,
            "embedding_model": embedder.name,
            "parameters": parameters,
            "misses": {
                "files": [str(p) for p in misses.files],
                "lines": misses.lines,
                "usable": len(all_steps),
                "skipped": len(misses.skipped),
                "skipped_examples": misses.skipped[:EXAMPLES_SHOWN],
                "routed_by_base": len(all_steps) - len(steps),
                "library_versions": misses.versions,
            },
            "records": len({s.record_id for s in steps}),
            "steps": len(steps),
            "subgoals": len(subgoals.texts),
            "llm_subgoals": None if written is None else written.as_report(),
            "clusters": entries,
            **leftovers_report(clustering, keys, subgoals),
            "built": sorted(built_ids),
            "extended": [],
            "close_to_base": close,
            "failed": [asdict(f) for f in failed],
            "coverage": coverage_report(
                before, after, built_ids, f"{options.base} ({base.version})", min_similarity
            ),
            "seconds": round(time.monotonic() - started, 1),
        }
        manifest = manifest_toml(
            library_version=library.version,
            data=str(options.misses),
            data_sha256=digest,
            judge_model=backend.model,
            embedding_model=embedder.name,
            parameters=parameters,
            built=report["built"],
            extended=[],
            base=str(options.base),
        )
        publish(staging, options.out, manifest=manifest, report=report)
    except BaseException:
        discard(staging)
        raise
    return BuildResult(
        out=options.out,
        library=library,
        built=tuple(report["built"]),
        extended=(),
        report=report,
    )


def _parameters(options: RefreshOptions) -> dict[str, Any]:
    return {"mode": "refresh", **options.stage_parameters()}
