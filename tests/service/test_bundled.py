"""The bundled GGUF's cache: assembled from its part packages, trusted only with the right hash.

A small fake part set stands in for the 22 packages (1.1 GB); the real ones are checked by the
`real` tests that load the embedded judge."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from scribe_service import bundled
from scribe_service.bundled import BundledModelError, ensure_judge_model

PARTS = [b"GGUF" + b"a" * 60, b"b" * 64, b"c" * 17]
MODEL = b"".join(PARTS)


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Three part files in place of the packages; returns the part numbers read, in order."""
    folder = tmp_path / "parts"
    folder.mkdir()
    for number, data in enumerate(PARTS, start=1):
        (folder / f"part{number}.bin").write_bytes(data)
    read: list[int] = []

    def part_file(number: int) -> Path:
        read.append(number)
        return folder / f"part{number}.bin"

    monkeypatch.setattr(bundled, "PARTS", len(PARTS))
    monkeypatch.setattr(bundled, "SIZE", len(MODEL))
    monkeypatch.setattr(bundled, "SHA256", hashlib.sha256(MODEL).hexdigest())
    monkeypatch.setattr(bundled, "_part_file", part_file)
    return read


def test_the_model_is_assembled_once_and_then_used_from_the_cache(
    tmp_path: Path, parts: list[int]
) -> None:
    cache = tmp_path / "cache"
    path = ensure_judge_model(cache)
    assert path == cache / bundled.FILE_NAME and path.read_bytes() == MODEL
    assert parts == [1, 2, 3]
    assert ensure_judge_model(cache) == path
    assert parts == [1, 2, 3]  # verified by its hash, not rebuilt
    assert [p.name for p in cache.iterdir()] == [bundled.FILE_NAME]  # no partial file left


def test_a_corrupt_cached_file_of_the_right_size_is_detected_and_rebuilt(
    tmp_path: Path, parts: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    corrupt = bytearray(MODEL)
    corrupt[70] ^= 0xFF  # one flipped byte: same size, wrong content
    (cache / bundled.FILE_NAME).write_bytes(corrupt)
    with caplog.at_level(logging.WARNING, logger="scribe_service.bundled"):
        path = ensure_judge_model(cache)
    assert path.read_bytes() == MODEL
    assert parts == [1, 2, 3]
    assert "wrong sha256" in caplog.text


def test_a_truncated_cached_file_is_rebuilt(tmp_path: Path, parts: list[int]) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / bundled.FILE_NAME).write_bytes(MODEL[:-1])
    assert ensure_judge_model(cache).read_bytes() == MODEL
    assert parts == [1, 2, 3]


def test_corrupt_parts_are_refused_and_nothing_is_cached(
    tmp_path: Path, parts: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundled, "SHA256", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(BundledModelError, match="sha256"):
        ensure_judge_model(cache)
    assert list(cache.iterdir()) == []
