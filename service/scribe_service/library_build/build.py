"""`scribe library build`: the stages in order, and the report of what each one did.

    records ─decompose→ steps (─write subgoals→ with --llm-subgoals)
    steps ─embed→ distinct subgoals ─cluster→ clusters
    clusters ─merge (with --base)→ extensions of base prototypes
             ─distil→ new prototypes (or reported failures)
    ─write→ staged library ─load_library→ coverage after ─publish→ DIR

The output holds the fallback and judge templates of the base library (the shipped one
without `--base`), plus every base prototype with `--base`, so it serves as it is. Coverage
is measured with the service's own router (`PrototypeIndex`, the configured
`min_similarity`): the share of input steps that route to a non-fallback prototype under the
base library, then under the built one.

With `--llm-subgoals` (`subgoals.py`) the clusters are cut on the model's skill-level subgoals
and the distiller is shown those, but everything the serving router sees stays on the
service's own subgoals: the exemplars (the members' service-side subgoals), the centroid a
merge compares with a base library, and coverage. At scoring time the service routes the
segmenter's subgoal, never the model's, so exemplars phrased as the model phrases would sit
apart from every query they are meant to catch.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scribe_service.library import MANIFEST, Library, LibraryError, Prototype, load_library
from scribe_service.library_build.cluster import Cluster, Clustering, cluster, spread_members
from scribe_service.library_build.decompose import (
    BuildStep,
    data_digest,
    decompose,
    read_build_records,
)
from scribe_service.library_build.distil import (
    DEFAULT_MAX_ATTEMPTS,
    ClusterBrief,
    DistilFailure,
    Distilled,
    DraftLimits,
    Member,
    distil,
    slug,
)
from scribe_service.library_build.errors import BuildError
from scribe_service.library_build.merge import add_exemplars, merge_target, nearest_prototypes
from scribe_service.library_build.subgoals import (
    SUBGOAL_MAX_TOKENS,
    SubgoalCounts,
    write_subgoals,
)
from scribe_service.library_build.write import (
    REPORT_JSON,
    REPORT_MD,
    discard,
    manifest_toml,
    publish,
    stage_library,
)
from scribe_service.pipeline.backends.base import JudgeBackend, Sampling
from scribe_service.pipeline.embed import Embedder, Vectors
from scribe_service.pipeline.retrieve import PrototypeIndex

MIN_EXEMPLARS = 5
"""A routable prototype needs this many distinct exemplars (`Prototype`), so a cluster needs
this many distinct subgoals to become one."""
_NOT_PROTOTYPES = {MANIFEST, REPORT_JSON, REPORT_MD}
_RESERVED_IDS = {Path(MANIFEST).stem}
EXAMPLES_SHOWN = 3

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class StageOptions:
    """What the cluster and distil stages take: the same for a build and a refresh."""

    min_size: int = MIN_EXEMPLARS
    """Distinct subgoals a cluster needs to be kept."""
    threshold: float = 0.5
    """Average-linkage cut: a cluster's members are on average at least this similar."""
    merge_threshold: float = 0.6
    """A cluster whose centroid is this close to a base exemplar extends that prototype (a
    build) or is left alone and reported (a refresh)."""
    max_exemplars: int = 16
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_tokens: int = 1500
    timeout: float | None = None
    """Seconds per distillation call; None: no limit."""
    limits: DraftLimits = DraftLimits()
    seed: int | None = 0
    llm_subgoals: bool = False
    """Have the judge write the subgoal of each step without a marker (`subgoals.py`)."""

    def stage_parameters(self) -> dict[str, Any]:
        """These options as a build report and manifest record them."""
        return {
            "min_size": self.min_size,
            "threshold": self.threshold,
            "merge_threshold": self.merge_threshold,
            "max_exemplars": self.max_exemplars,
            "max_attempts": self.max_attempts,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "draft_limits": asdict(self.limits),
            "llm_subgoals": self.llm_subgoals,
        }

    def check_stages(self) -> None:
        if self.min_size < MIN_EXEMPLARS:
            raise BuildError(
                f"--min-size must be at least {MIN_EXEMPLARS}: a prototype needs "
                f"{MIN_EXEMPLARS} distinct exemplars, taken from its cluster's subgoals"
            )
        for name in ("threshold", "merge_threshold"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise BuildError(f"{name.replace('_', '-')} must be between 0 and 1, got {value}")
        if self.max_exemplars < MIN_EXEMPLARS:
            raise BuildError(f"max-exemplars must be at least {MIN_EXEMPLARS}")
        if self.max_attempts < 1:
            raise BuildError("max-attempts must be at least 1")


async def judge_subgoals(
    backend: JudgeBackend, steps: list[BuildStep], options: StageOptions, progress: Progress
) -> tuple[list[BuildStep], SubgoalCounts | None]:
    """The steps with the subgoals the judge wrote, and its counts, when `llm_subgoals` asks
    for them; else the steps as they are and None."""
    if not options.llm_subgoals:
        return steps, None
    rewrite = await write_subgoals(
        backend,
        steps,
        sampling=Sampling(temperature=0.0, max_tokens=SUBGOAL_MAX_TOKENS, seed=options.seed),
        max_attempts=options.max_attempts,
        timeout=options.timeout,
    )
    written = rewrite.counts
    progress(
        f"{written.rewritten} of {written.asked} derived subgoals rewritten, "
        f"{written.kept} kept on failure ({written.calls} judge calls)"
    )
    return rewrite.steps, written


@dataclass(frozen=True, kw_only=True)
class BuildOptions(StageOptions):
    data: Path
    out: Path
    base: Path | None = None
    """Extend this library; None: build beside the shipped library's fallback and templates."""
    limit: int | None = None
    sample: int | None = None
    sample_seed: int = 0

    def check(self) -> None:
        self.check_stages()
        if self.out.exists():
            raise BuildError(f"{self.out}: already exists; a build writes a new directory")
        if not self.data.is_file():
            raise BuildError(f"{self.data}: no such file")


@dataclass(frozen=True)
class BuildResult:
    out: Path
    library: Library
    built: tuple[str, ...]
    extended: tuple[str, ...]
    report: dict[str, Any]


@dataclass(frozen=True)
class Subgoals:
    """The distinct subgoals of the input (clustering works on these), and each step's row."""

    texts: list[str]
    vectors: Vectors
    rows: list[int]
    """`rows[i]`: the row of step i's subgoal."""


def embed_subgoals(
    steps: Sequence[BuildStep], embedder: Embedder, *, llm: bool = False
) -> Subgoals:
    """The service's subgoals of `steps`, or with `llm` the ones a build clusters on."""
    index: dict[str, int] = {}
    rows = [
        index.setdefault(step.cluster_subgoal if llm else step.subgoal, len(index))
        for step in steps
    ]
    texts = list(index)
    return Subgoals(texts, embedder.encode(texts), rows)


def coverage(
    library: Library,
    embedder: Embedder,
    steps: Sequence[BuildStep],
    vectors: Vectors,
    min_similarity: float,
) -> list[str | None]:
    """For each step, the prototype the service would route it to (None: the fallback)."""
    index = PrototypeIndex(library, embedder)
    routes = index.route(vectors, min_similarity, [s.step for s in steps])
    return [None if route.fallback else route.prototype.id for route in routes]


def share(routed: Sequence[str | None]) -> float | None:
    return round(sum(r is not None for r in routed) / len(routed), 4) if routed else None


def coverage_report(
    before: Sequence[str | None],
    after: Sequence[str | None],
    built_ids: set[str],
    before_library: str,
    min_similarity: float,
) -> dict[str, Any]:
    """The share of input steps routed to a non-fallback prototype, before and after."""
    return {
        "before": share(before),
        "before_library": before_library,
        "after": share(after),
        "routed_to_built": share([r if r in built_ids else None for r in after]),
        "min_similarity": min_similarity,
    }


def leftovers_report(
    clustering: Clustering, keys: Sequence[str], subgoals: Subgoals
) -> dict[str, list[dict[str, Any]]]:
    """The clusters too small to keep: absorbed into a kept one, or dropped."""
    return {
        "absorbed": [
            {
                "subgoals": len(a.cluster.members),
                "into": keys[a.into],
                "similarity": a.similarity,
                "examples": [subgoals.texts[r] for r in a.cluster.members[:EXAMPLES_SHOWN]],
            }
            for a in clustering.absorbed
        ],
        "dropped": [
            {
                "subgoals": len(g.members),
                "examples": [subgoals.texts[r] for r in g.members[:EXAMPLES_SHOWN]],
            }
            for g in clustering.dropped
        ],
    }


def _members(group: Cluster, subgoals: Subgoals, steps: Sequence[BuildStep]) -> list[BuildStep]:
    """The cluster's steps, most typical first (nearest the centroid), so the few members a
    prompt shows are representative ones."""
    rows = set(group.members)
    centre = group.centroid(subgoals.vectors)
    chosen = [i for i, row in enumerate(subgoals.rows) if row in rows]
    closeness = subgoals.vectors[[subgoals.rows[i] for i in chosen]] @ centre
    order = np.argsort(-closeness, kind="stable")
    return [steps[chosen[int(i)]] for i in order]


def served_cluster(group: Cluster, subgoals: Subgoals, served: Subgoals) -> Cluster:
    """The cluster's steps as rows of `served`, the service's own subgoals (the same cluster
    when the build clusters on those)."""
    if served is subgoals:
        return group
    rows = set(group.members)
    return Cluster(
        tuple(sorted({served.rows[i] for i, r in enumerate(subgoals.rows) if r in rows}))
    )


def exemplars_of(group: Cluster, subgoals: Subgoals, served: Subgoals, k: int) -> list[str]:
    """Up to `k` exemplars spread over the service-side subgoals of the cluster's steps. When
    those hold fewer than a prototype needs (steps that share a derived subgoal but got
    different LLM ones), the LLM's phrasings make up the number: a prototype that routes a
    little worse is better than a cluster lost for want of distinct exemplars."""
    own = served_cluster(group, subgoals, served)
    texts = [served.texts[r] for r in spread_members(served.vectors, own.members, k)]
    if len(texts) < MIN_EXEMPLARS and served is not subgoals:
        extra = [subgoals.texts[r] for r in spread_members(subgoals.vectors, group.members, k)]
        texts += [t for t in extra if t not in texts][: MIN_EXEMPLARS - len(texts)]
    return texts


def cluster_brief(
    key: str,
    group: Cluster,
    subgoals: Subgoals,
    steps: Sequence[BuildStep],
    max_exemplars: int,
    served: Subgoals | None = None,
) -> ClusterBrief:
    """What the distiller gets: the members with the subgoals clustered on, the exemplars from
    `served` (the service's subgoals; None: the ones clustered on are those)."""
    members = _members(group, subgoals, steps)
    exemplars = exemplars_of(group, subgoals, served or subgoals, max_exemplars)
    return ClusterBrief(
        key=key,
        members=tuple(Member(m.cluster_subgoal, m.step.content, m.label) for m in members),
        exemplars=tuple(exemplars),
        steps=len(members),
        trajectories=len({m.record_id for m in members}),
    )


def unique_id(wanted: str, taken: set[str]) -> str:
    ident = wanted if wanted and wanted not in _RESERVED_IDS else f"skill_{wanted}".rstrip("_")
    candidate, n = ident, 1
    while candidate in taken or candidate in _RESERVED_IDS:
        n += 1
        candidate = f"{ident}_{n}"
    taken.add(candidate)
    return candidate


def base_files(directory: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(directory.glob("*.toml")) if p.name not in _NOT_PROTOTYPES}


def cluster_entry(
    key: str, group: Cluster, subgoals: Subgoals, steps: Sequence[BuildStep]
) -> dict[str, Any]:
    members = _members(group, subgoals, steps)
    labels = Counter(m.label for m in members)
    return {
        "key": key,
        "subgoals": len(group.members),
        "steps": len(members),
        "trajectories": len({m.record_id for m in members}),
        "labels": {"1": labels[1], "0": labels[0], "-1": labels[-1], "none": labels[None]},
        # The most typical members, as the distiller saw them first.
        "examples": list(dict.fromkeys(m.cluster_subgoal for m in members))[:EXAMPLES_SHOWN],
        "outcome": "",
    }


async def build_library(
    options: BuildOptions,
    *,
    backend: JudgeBackend,
    embedder: Embedder,
    shipped: Path,
    min_similarity: float,
    progress: Progress = lambda _: None,
) -> BuildResult:
    """Build the library at `options.out`. `shipped` is the library whose fallback and
    templates a build without `--base` uses, and its coverage baseline."""
    options.check()
    started = time.monotonic()
    base_dir = options.base or shipped
    try:
        base = load_library(base_dir)
    except LibraryError as exc:
        raise BuildError(f"base library: {exc}") from exc
    records = read_build_records(
        options.data, limit=options.limit, sample=options.sample, seed=options.sample_seed
    )
    steps = decompose(records)
    if not steps:
        raise BuildError(f"{options.data}: the records have no steps with a subgoal")
    if options.llm_subgoals:
        progress(f"{len(records)} records, {len(steps)} steps; the judge writes their subgoals")
    steps, written = await judge_subgoals(backend, steps, options, progress)
    progress(f"{len(records)} records, {len(steps)} steps; embedding their subgoals")
    served = embed_subgoals(steps, embedder)
    subgoals = embed_subgoals(steps, embedder, llm=True) if options.llm_subgoals else served
    step_vectors = served.vectors[served.rows]
    before = coverage(base, embedder, steps, step_vectors, min_similarity)

    clustering = cluster(subgoals.vectors, threshold=options.threshold, min_size=options.min_size)
    keys = [f"cluster_{i}" for i in range(len(clustering.kept))]
    entries = [
        cluster_entry(k, g, subgoals, steps) for k, g in zip(keys, clustering.kept, strict=True)
    ]
    progress(
        f"{len(subgoals.texts)} distinct subgoals → {len(clustering.kept)} clusters "
        f"({len(clustering.absorbed)} small groups absorbed, {len(clustering.dropped)} dropped)"
    )

    targets = _merge_targets(clustering, subgoals, served, base, embedder, options)
    extended: dict[str, Prototype] = {}
    to_distil: list[int] = []
    for i, (group, target) in enumerate(zip(clustering.kept, targets, strict=True)):
        if target is None:
            to_distil.append(i)
            continue
        prototype_id, similarity = target
        current = extended.get(prototype_id, base.prototypes[prototype_id])
        phrasings = exemplars_of(group, subgoals, served, options.max_exemplars)
        extended[prototype_id] = add_exemplars(current, phrasings, options.max_exemplars)
        added = len(extended[prototype_id].exemplars) - len(current.exemplars)
        entries[i]["outcome"] = f"extended {prototype_id} (+{added} exemplars, sim {similarity})"

    sampling = Sampling(temperature=0.0, max_tokens=options.max_tokens, seed=options.seed)
    taken = set(base.prototypes) if options.base else {base.fallback.id}
    built: list[Prototype] = []
    failed: list[DistilFailure] = []
    for n, i in enumerate(to_distil, start=1):
        brief = cluster_brief(
            keys[i], clustering.kept[i], subgoals, steps, options.max_exemplars, served
        )
        progress(f"distilling {brief.key} ({n}/{len(to_distil)}, {brief.steps} steps)")
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
            prototype = outcome.prototype.model_copy(update={"id": ident})
            built.append(prototype)
            entries[i]["outcome"] = f"built {ident} ({outcome.attempts} attempt(s))"
            entries[i]["prototype_id"] = ident
            if outcome.leaks:
                entries[i]["outcome"] += "; check instance details: " + ", ".join(outcome.leaks)
                entries[i]["leaks"] = list(outcome.leaks)
        else:
            failed.append(outcome)
            entries[i]["outcome"] = f"failed after {outcome.attempts} attempt(s)"

    if options.base:
        copied = {n: p for n, p in base_files(base_dir).items() if Path(n).stem not in extended}
    else:
        copied = {f"{base.fallback.id}.toml": base_dir / f"{base.fallback.id}.toml"}
    staging = stage_library(
        options.out,
        prototypes=[*extended.values(), *built],
        copied=copied,
        templates=base_dir / "templates",
    )
    try:
        try:
            library = load_library(staging)
        except LibraryError as exc:  # every rendered prototype was validated: a bug if so
            raise BuildError(f"the built library does not load: {exc}") from exc
        after = coverage(library, embedder, steps, step_vectors, min_similarity)
        built_ids = {p.id for p in built}
        report: dict[str, Any] = {
            "data": str(options.data),
            "data_sha256": data_digest(options.data),
            "library_version": library.version,
            "judge_model": backend.model,
            "embedding_model": embedder.name,
            "parameters": _parameters(options),
            "records": len(records),
            "steps": len(steps),
            "subgoals": len(subgoals.texts),
            "llm_subgoals": None if written is None else written.as_report(),
            "clusters": entries,
            **leftovers_report(clustering, keys, subgoals),
            "built": sorted(built_ids),
            "extended": sorted(extended),
            "failed": [asdict(f) for f in failed],
            "coverage": coverage_report(
                before, after, built_ids, f"{base_dir} ({base.version})", min_similarity
            ),
            "seconds": round(time.monotonic() - started, 1),
        }
        manifest = manifest_toml(
            library_version=library.version,
            data=str(options.data),
            data_sha256=report["data_sha256"],
            judge_model=backend.model,
            embedding_model=embedder.name,
            parameters=report["parameters"],
            built=report["built"],
            extended=report["extended"],
            base=str(base_dir) if options.base else "",
        )
        publish(staging, options.out, manifest=manifest, report=report)
    except BaseException:
        discard(staging)
        raise
    return BuildResult(
        out=options.out,
        library=library,
        built=tuple(report["built"]),
        extended=tuple(report["extended"]),
        report=report,
    )


def _merge_targets(
    clustering: Clustering,
    subgoals: Subgoals,
    served: Subgoals,
    base: Library,
    embedder: Embedder,
    options: BuildOptions,
) -> list[tuple[str, float] | None]:
    """Per kept cluster, the base prototype it extends and how close it is (None: a new one).
    Only with `--base`: without it the output has no other prototypes to extend. The centroid
    is of the service's subgoals of the cluster's steps, the queries the router will see."""
    if options.base is None or not clustering.kept:
        return [None] * len(clustering.kept)
    owners = [p.id for p in base.routable() for _ in p.exemplars]
    exemplars = embedder.encode([e for p in base.routable() for e in p.exemplars])
    centroids = np.stack(
        [served_cluster(g, subgoals, served).centroid(served.vectors) for g in clustering.kept]
    )
    targets: list[tuple[str, float] | None] = []
    for match in nearest_prototypes(centroids, exemplars, owners):
        target = merge_target(match, options.merge_threshold)
        targets.append(None if target is None or match is None else (target, match.similarity))
    return targets


def _parameters(options: BuildOptions) -> dict[str, Any]:
    return {
        "limit": options.limit,
        "sample": options.sample,
        "sample_seed": options.sample_seed,
        **options.stage_parameters(),
    }
