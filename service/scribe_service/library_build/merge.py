"""Stage 4: a cluster that is an existing prototype's skill extends it instead of duplicating it.

A cluster joins the base prototype owning the exemplar nearest its centroid when that
similarity reaches `threshold`: the rule routing applies to a single subgoal, applied to the
cluster's centre. Joining adds the cluster's exemplars the prototype does not already have;
its rubric text is a person's and stays as written. Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scribe_service.library import Prototype
from scribe_service.pipeline.embed import Vectors


@dataclass(frozen=True)
class Match:
    prototype_id: str
    similarity: float


def nearest_prototypes(
    centroids: Vectors, exemplars: Vectors, owners: Sequence[str]
) -> list[Match | None]:
    """For each centroid, the owner of its nearest exemplar (None when there are none)."""
    if len(exemplars) != len(owners):
        raise ValueError(f"{len(owners)} owners for {len(exemplars)} exemplar vectors")
    if len(exemplars) == 0:
        return [None] * len(centroids)
    similarities = centroids @ exemplars.T
    best = similarities.argmax(axis=1)
    return [
        Match(owners[int(row)], round(float(similarities[i, row]), 4))
        for i, row in enumerate(best.tolist())
    ]


def merge_target(match: Match | None, threshold: float) -> str | None:
    return match.prototype_id if match is not None and match.similarity >= threshold else None


def add_exemplars(prototype: Prototype, phrasings: Sequence[str], limit: int) -> Prototype:
    """`prototype` with the new phrasings appended (no repeats), up to `limit` added."""
    have = {e.strip() for e in prototype.exemplars}
    added: list[str] = []
    for phrasing in phrasings:
        text = phrasing.strip()
        if text and text not in have and len(added) < limit:
            have.add(text)
            added.append(text)
    if not added:
        return prototype
    # Validated again, not model_copy: the result must still be a loadable prototype.
    data = prototype.model_dump()
    data["exemplars"] = [*prototype.exemplars, *added]
    return Prototype.model_validate(data)
