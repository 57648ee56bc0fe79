"""Clustering on hand-made unit vectors whose linkage can be worked out on paper.

Rows: a1 = e1, a2 = (.8, .6, 0, 0), a3 = (.8, -.6, 0, 0) form group A (pairwise similarities
.8, .8, .28: a1+a2 merge at .8, then a3 joins at mean(.8, .28) = .54 >= .5). x = (.56, 0, s, 0)
is .56, .448, .448 similar to them: mean .485 < .5, so it stays alone, yet A's centroid is e1
and x is .56 from it. b1 = e4, b2 = (0, .28, 0, .96) form group B (.96), orthogonal to A's
centroid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scribe_service.library_build.cluster import (
    Absorbed,
    Cluster,
    agglomerate,
    cluster,
    spread_members,
    unit_mean,
)

A1, A2, A3 = (1.0, 0.0, 0.0, 0.0), (0.8, 0.6, 0.0, 0.0), (0.8, -0.6, 0.0, 0.0)
X = (0.56, 0.0, math.sqrt(1 - 0.56**2), 0.0)
B1, B2 = (0.0, 0.0, 0.0, 1.0), (0.0, 0.28, 0.0, 0.96)
VECTORS = np.array([A1, A2, A3, X, B1, B2], dtype=np.float32)


def test_groups_are_cut_at_the_mean_similarity() -> None:
    assert agglomerate(VECTORS, 0.5) == [Cluster((0, 1, 2)), Cluster((4, 5)), Cluster((3,))]


def test_a_higher_threshold_splits_a_group_whose_mean_similarity_is_below_it() -> None:
    # a3 joins {a1, a2} at .54: at .6 it stays out.
    assert Cluster((0, 1)) in agglomerate(VECTORS, 0.6)
    assert Cluster((2,)) in agglomerate(VECTORS, 0.6)


def test_small_groups_are_absorbed_when_close_to_a_kept_centroid_else_dropped() -> None:
    result = cluster(VECTORS, threshold=0.5, min_size=3)
    assert result.kept == [Cluster((0, 1, 2, 3))]
    [absorbed] = result.absorbed
    assert absorbed == Absorbed(Cluster((3,)), into=0, similarity=pytest.approx(0.56, abs=1e-4))
    assert result.dropped == [Cluster((4, 5))]  # its centroid is orthogonal to A's


def test_nothing_is_kept_when_every_group_is_small() -> None:
    result = cluster(VECTORS, threshold=0.5, min_size=4)
    assert result.kept == [] and result.absorbed == []
    assert sorted(c.members for c in result.dropped) == [(0, 1, 2), (3,), (4, 5)]


@pytest.mark.parametrize("count", [0, 1])
def test_tiny_inputs(count: int) -> None:
    assert agglomerate(VECTORS[:count], 0.5) == ([Cluster((0,))] if count else [])


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2])
def test_threshold_must_be_a_similarity_strictly_between_0_and_1(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        agglomerate(VECTORS, threshold)


def test_centroid_is_the_unit_mean() -> None:
    np.testing.assert_allclose(unit_mean(VECTORS[:3]), [1, 0, 0, 0], atol=1e-6)


def test_exemplars_start_at_the_centre_then_spread_out() -> None:
    # Centre of A is e1 = a1; a2 and a3 are equally far (.8) from it, the first wins the tie.
    assert spread_members(VECTORS, (0, 1, 2), 2) == [0, 1]
    assert spread_members(VECTORS, (0, 1, 2), 10) == [0, 1, 2]
    # Then the farthest from both chosen: a3 (.8 from a1, .28 from a2), not the near-copy.
    near_copy = np.array([A1, A2, A2, A3], dtype=np.float32)
    assert spread_members(near_copy, (0, 1, 2, 3), 3) == [0, 1, 3]


def test_a_member_is_picked_once_even_when_vectors_repeat() -> None:
    # Distinct subgoals can embed alike; each is still a distinct exemplar.
    same = np.array([A1, A1, A2], dtype=np.float32)
    assert spread_members(same, (0, 1, 2), 2) == [0, 2]
    assert spread_members(same, (0, 1, 2), 3) == [0, 2, 1]
