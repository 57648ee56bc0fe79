from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from scribe_service import app as app_module
from scribe_service.app import build_pipeline
from scribe_service.pipeline.embed import Vectors
from scribe_service.pipeline.embed_store import (
    STORE_DIR,
    StoredEmbedder,
    prune,
    store_key,
    stored,
)
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder

TEXTS = ["Search for the director", "Compute 3 * 17", "State the final answer"]


class CountingEmbedder(FakeEmbedder):
    """A fake model that says what decides its vectors and records every call."""

    def __init__(self, fingerprint: str | None = "fake-v1") -> None:
        self.fingerprint = fingerprint
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(list(texts))
        return super().encode(texts)


def test_a_second_store_over_the_same_directory_calls_no_model(tmp_path: Path) -> None:
    first = CountingEmbedder()
    vectors = StoredEmbedder(first, tmp_path, "fake-v1").encode(TEXTS)
    again = CountingEmbedder()
    reread = StoredEmbedder(again, tmp_path, "fake-v1").encode(TEXTS)
    assert first.calls == [TEXTS] and again.calls == []
    np.testing.assert_array_equal(reread, vectors)
    np.testing.assert_array_equal(reread, FakeEmbedder().encode(TEXTS))


@pytest.mark.parametrize(
    ("fingerprint", "texts"),
    [
        pytest.param("fake-v2", TEXTS, id="another-model"),
        pytest.param("fake-v1", [*TEXTS[:2], "State the answer"], id="a-changed-exemplar"),
        pytest.param("fake-v1", TEXTS[::-1], id="another-order"),
    ],
)
def test_another_model_or_other_texts_are_embedded_anew(
    tmp_path: Path, fingerprint: str, texts: list[str]
) -> None:
    StoredEmbedder(CountingEmbedder(), tmp_path, "fake-v1").encode(TEXTS)
    model = CountingEmbedder(fingerprint)
    vectors = StoredEmbedder(model, tmp_path, fingerprint).encode(texts)
    assert model.calls == [texts]
    np.testing.assert_array_equal(vectors, FakeEmbedder().encode(texts))


def test_texts_are_length_prefixed_in_the_key() -> None:
    assert store_key("m", ["ab", "c"]) != store_key("m", ["a", "bc"])
    assert store_key("m", ["a"]) != store_key("n", ["a"])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda path: path.write_bytes(b"not an array"), id="garbage"),
        pytest.param(lambda path: np.save(path, np.zeros((1, 64), np.float32)), id="wrong-shape"),
        pytest.param(
            lambda path: np.save(path, np.full((3, 64), np.nan, np.float32)), id="not-finite"
        ),
    ],
)
def test_an_unreadable_file_is_recomputed_and_rewritten(tmp_path: Path, damage: object) -> None:
    StoredEmbedder(CountingEmbedder(), tmp_path, "fake-v1").encode(TEXTS)
    [path] = tmp_path.glob("*.npy")
    damage(path)  # type: ignore[operator]
    model = CountingEmbedder()
    vectors = StoredEmbedder(model, tmp_path, "fake-v1").encode(TEXTS)
    assert model.calls == [TEXTS]
    np.testing.assert_array_equal(vectors, FakeEmbedder().encode(TEXTS))
    np.testing.assert_array_equal(np.load(path), vectors)


def test_an_unwritable_directory_still_gives_the_vectors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store's directory would be")
    model = CountingEmbedder()
    vectors = StoredEmbedder(model, blocker / "store", "fake-v1").encode(TEXTS)
    np.testing.assert_array_equal(vectors, FakeEmbedder().encode(TEXTS))
    assert not list(tmp_path.glob("**/*.tmp"))


def test_prune_keeps_the_most_recently_used_files(tmp_path: Path) -> None:
    for number in range(5):
        path = tmp_path / f"{number}.npy"
        path.write_bytes(b"")
        os.utime(path, ns=(number * 10**9, number * 10**9))
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["3.npy", "4.npy"]


def test_a_hit_counts_as_a_use_for_pruning(tmp_path: Path) -> None:
    def store(texts: list[str]) -> Path:
        StoredEmbedder(CountingEmbedder(), tmp_path, "fake-v1", keep=2).encode(texts)
        return tmp_path / f"{store_key('fake-v1', texts)}.npy"

    kept, other = store(TEXTS), store(["a"])
    os.utime(kept, ns=(0, 0))  # the older of the two
    os.utime(other, ns=(10**9, 10**9))
    assert store(TEXTS) == kept  # a hit: now the most recently used
    store(["b"])  # a third file: one of the first two goes
    assert kept.exists() and not other.exists()


def test_an_embedder_that_cannot_say_what_decides_its_vectors_is_not_stored(
    tmp_path: Path,
) -> None:
    plain = FakeEmbedder()
    assert stored(plain, tmp_path) is plain
    unknown = CountingEmbedder(fingerprint=None)
    assert stored(unknown, tmp_path) is unknown
    assert isinstance(stored(CountingEmbedder(), tmp_path), StoredEmbedder)


@pytest.mark.anyio
async def test_a_restart_indexes_the_library_without_embedding_its_exemplars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models: list[CountingEmbedder] = []

    def make_embedder(*args: object, **kwargs: object) -> CountingEmbedder:
        models.append(CountingEmbedder())
        return models[-1]

    monkeypatch.setattr(app_module, "make_embedder", make_embedder)
    settings = Settings(prototypes_dir=PROTOTYPES, cache_dir=tmp_path)
    first = await build_pipeline(settings, with_judge=False)
    second = await build_pipeline(settings, with_judge=False)
    exemplars = [e for p in first.library.routable() for e in p.exemplars]
    assert models[0].calls == [exemplars] and models[1].calls == []
    assert len(list((tmp_path / STORE_DIR).glob("*.npy"))) == 1
    vector = first.embedder.encode(["Search for the director"])
    [one] = first.index.route(vector, 0.0, None)
    [two] = second.index.route(vector, 0.0, None)
    assert (one.prototype.id, one.similarity) == (two.prototype.id, two.similarity)
