"""Stage 2: group subgoal embeddings into skills, the number of groups chosen by the data.

Average-linkage agglomerative clustering on cosine distance, cut where the mean similarity
between two groups falls below `threshold`: the threshold, not a guessed k, decides how many
skills the data holds, and a group's members are on average that close to one another, the
same notion of "close" routing uses (a cosine between MiniLM vectors). Average linkage rather
than single linkage: single linkage chains a corpus of paraphrases into one giant group.

A group smaller than `min_size` is too small to generalise from. If its centroid is within
`threshold` of a kept group's centroid it joins that group (it is the same skill, split off by
the average-linkage cut); otherwise it is dropped, and both outcomes are reported. Pure
functions over unit vectors; indices refer to the rows passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage  # type: ignore[import-untyped]

from scribe_service.pipeline.embed import Vectors


@dataclass(frozen=True)
class Cluster:
    members: tuple[int, ...]
    """Row indices, ascending."""

    def centroid(self, vectors: Vectors) -> Vectors:
        return unit_mean(vectors[list(self.members)])


@dataclass(frozen=True)
class Absorbed:
    """A small group that joined the kept cluster `into` (an index into `Clustering.kept`)."""

    cluster: Cluster
    into: int
    similarity: float


@dataclass(frozen=True)
class Clustering:
    kept: list[Cluster]
    """Largest first as cut (before absorbing); each holds the small groups absorbed into it."""
    absorbed: list[Absorbed]
    dropped: list[Cluster]


def unit_mean(vectors: Vectors) -> Vectors:
    mean = vectors.mean(axis=0, dtype=np.float64)
    norm = float(np.linalg.norm(mean))
    unit: Vectors = (mean / norm if norm else mean).astype(np.float32)
    return unit


def agglomerate(vectors: Vectors, threshold: float) -> list[Cluster]:
    """Average-linkage groups whose members are on average at least `threshold` similar;
    largest first, ties by first member, so the result does not depend on scipy's labels."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    n = len(vectors)
    if n == 0:
        return []
    if n == 1:
        return [Cluster((0,))]
    tree = linkage(np.asarray(vectors, dtype=np.float64), method="average", metric="cosine")
    labels = fcluster(tree, t=1.0 - threshold, criterion="distance")
    groups: dict[int, list[int]] = {}
    for row, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(row)
    clusters = [Cluster(tuple(rows)) for rows in groups.values()]
    return sorted(clusters, key=lambda c: (-len(c.members), c.members[0]))


def cluster(vectors: Vectors, *, threshold: float, min_size: int) -> Clustering:
    """Agglomerate, then fold each group below `min_size` into the nearest kept group when its
    centroid is within `threshold`, else drop it. Absorbing is judged against the kept groups
    as cut, so the outcome does not depend on the order small groups are visited in."""
    groups = agglomerate(vectors, threshold)
    big = [g for g in groups if len(g.members) >= min_size]
    small = [g for g in groups if len(g.members) < min_size]
    if not big:
        return Clustering(kept=[], absorbed=[], dropped=small)
    centroids = np.stack([g.centroid(vectors) for g in big])
    extra: list[list[int]] = [[] for _ in big]
    absorbed, dropped = [], []
    for group in small:
        similarities = centroids @ group.centroid(vectors)
        best = int(np.argmax(similarities))
        similarity = float(similarities[best])
        if similarity >= threshold:
            absorbed.append(Absorbed(group, best, round(similarity, 4)))
            extra[best].extend(group.members)
        else:
            dropped.append(group)
    kept = [Cluster(tuple(sorted((*g.members, *more)))) for g, more in zip(big, extra, strict=True)]
    return Clustering(kept=kept, absorbed=absorbed, dropped=dropped)


def spread_members(vectors: Vectors, members: tuple[int, ...], k: int) -> list[int]:
    """Up to `k` members that cover the cluster: the one nearest the centroid, then each time
    the member farthest from those chosen. Routing goes to the nearest exemplar, so exemplars
    spread over the cluster catch more of its subgoals than k near-copies of its centre."""
    if k <= 0 or not members:
        return []
    rows = vectors[list(members)]
    centre = unit_mean(rows)
    chosen = [int(np.argmax(rows @ centre))]
    nearest = (rows @ rows[chosen[0]]).astype(np.float64)
    nearest[chosen[0]] = np.inf
    while len(chosen) < min(k, len(members)):
        candidate = int(np.argmin(nearest))
        chosen.append(candidate)
        nearest = np.maximum(nearest, rows @ rows[candidate])
        nearest[candidate] = np.inf  # a row is chosen once, even when it repeats a chosen one
    return [members[i] for i in chosen]
