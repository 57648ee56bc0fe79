"""Merging a cluster into an existing prototype: nearest exemplar, threshold, exemplars added."""

from __future__ import annotations

import numpy as np
import pytest

from scribe_service.library import Library
from scribe_service.library_build.merge import (
    Match,
    add_exemplars,
    merge_target,
    nearest_prototypes,
)


def test_each_centroid_goes_to_the_owner_of_its_nearest_exemplar() -> None:
    centroids = np.array([[1, 0], [0, 1]], dtype=np.float32)
    exemplars = np.array([[0.6, 0.8], [1, 0], [0.8, 0.6]], dtype=np.float32)
    matches = nearest_prototypes(centroids, exemplars, ["p", "q", "p"])
    # (1, 0): .6, 1, .8 → q; (0, 1): .8, 0, .6 → p.
    assert matches == [Match("q", 1.0), Match("p", pytest.approx(0.8))]


def test_no_base_exemplars_means_no_match() -> None:
    centroids = np.ones((2, 3), dtype=np.float32)
    assert nearest_prototypes(centroids, np.zeros((0, 3), dtype=np.float32), []) == [None, None]


def test_owners_must_match_the_exemplars() -> None:
    with pytest.raises(ValueError, match="owners"):
        nearest_prototypes(np.ones((1, 2), np.float32), np.ones((2, 2), np.float32), ["p"])


@pytest.mark.parametrize(
    ("similarity", "expected"), [(0.59, None), (0.6, "p"), (0.9, "p")], ids=str
)
def test_merge_only_at_or_above_the_threshold(similarity: float, expected: str | None) -> None:
    assert merge_target(Match("p", similarity), 0.6) == expected
    assert merge_target(None, 0.6) is None


def test_exemplars_are_added_without_repeats_and_up_to_the_limit(library: Library) -> None:
    prototype = library.prototypes["arithmetic_computation"]
    existing = prototype.exemplars[0]
    merged = add_exemplars(
        prototype, [f"  {existing} ", "Sum the two costs", "Sum the two costs", "Halve it", "x"], 2
    )
    assert merged.exemplars == (*prototype.exemplars, "Sum the two costs", "Halve it")
    # The rubric is a person's and stays as written.
    assert merged.model_dump(exclude={"exemplars"}) == prototype.model_dump(exclude={"exemplars"})
    assert add_exemplars(prototype, [existing], 5) is prototype
