"""The miss log (SCRIBE_MISS_LOG) through the real app: one line per scored step routed to the
fallback rubric, none for a step the library covers, with what a library refresh needs.

Lines are written by a background thread; leaving the `TestClient` runs the lifespan's
shutdown, which drains and flushes the log, so each test reads the file after that.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from scribe_service.app import create_app
from scribe_service.library import Library, load_library
from scribe_service.miss_log import MAX_CONTENT_CHARS
from scribe_service.settings import Settings
from support import PROTOTYPES, FakeEmbedder, FakeJudge

COVERED = "Solve the quadratic equation for x"  # an exemplar of algebraic_manipulation
UNCOVERED = "zzz qqq xyzzy plugh"
# Only an exact exemplar clears it: the other step is certain to fall back.
STRICT = {"min_similarity": 0.99}
LINE_KEYS = {
    "time", "request_id", "metadata", "library_version", "step", "message_index", "subgoal",
    "subgoal_source", "content", "content_chars", "similarity", "threshold",
    "nearest_prototype_id", "fallback_prototype_id", "score", "status",
}  # fmt: skip


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]


def _client(settings: Settings) -> TestClient:
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=FakeJudge())
    return TestClient(app)


def _request(**extra: Any) -> dict[str, Any]:
    return {
        "steps": [
            {"subgoal": COVERED, "content": "x = 2 or x = 3"},
            {"subgoal": UNCOVERED, "content": "Something the library has no skill for."},
        ],
        "options": STRICT,
        **extra,
    }


def _post(client: TestClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_a_fallback_step_is_logged_with_what_a_refresh_needs(
    settings: Settings, tmp_path: Path, library: Library
) -> None:
    settings.miss_log = tmp_path / "misses.jsonl"
    with _client(settings) as client:
        answer = _post(client, "/v1/score", _request(metadata={"global_step": 7}))
    covered, missed = answer["steps"]
    assert not covered["fallback"] and missed["fallback"]
    [line] = _lines(settings.miss_log)
    assert set(line) == LINE_KEYS
    assert line["request_id"] == answer["request_id"]
    assert line["metadata"] == {"global_step": 7}
    assert line["library_version"] == library.version == answer["library_version"]
    assert (line["step"], line["message_index"]) == (1, None)
    assert (line["subgoal"], line["subgoal_source"]) == (UNCOVERED, missed["subgoal_source"])
    assert line["content"] == "Something the library has no skill for."
    assert line["content_chars"] == len(line["content"])
    assert line["similarity"] == missed["similarity"] and line["threshold"] == 0.99
    # The prototype that came closest, not the fallback it was judged with.
    assert line["nearest_prototype_id"] in library.prototypes
    assert line["nearest_prototype_id"] != library.fallback.id
    assert line["fallback_prototype_id"] == library.fallback.id == missed["prototype_id"]
    assert (line["score"], line["status"]) == (missed["score"], "ok")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])


def test_covered_steps_and_routing_alone_write_nothing(settings: Settings, tmp_path: Path) -> None:
    settings.miss_log = tmp_path / "misses.jsonl"
    with _client(settings) as client:
        _post(client, "/v1/score", {"steps": [{"subgoal": COVERED, "content": "x = 2"}]})
        routed = _post(client, "/v1/route", {"steps": _request()["steps"], **STRICT})
        assert routed["steps"][1]["fallback"]  # a miss, but /v1/route judges nothing
    assert not settings.miss_log.exists() or _lines(settings.miss_log) == []


def test_every_request_of_a_batch_is_logged(settings: Settings, tmp_path: Path) -> None:
    settings.miss_log = tmp_path / "misses.jsonl"
    with _client(settings) as client:
        answer = _post(
            client,
            "/v1/score/batch",
            {"requests": [_request(metadata={"i": i}) for i in range(3)]},
        )
    lines = _lines(settings.miss_log)
    assert [line["metadata"] for line in lines] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [line["request_id"] for line in lines] == [r["request_id"] for r in answer["results"]]


def test_a_long_step_is_cut_to_an_excerpt(settings: Settings, tmp_path: Path) -> None:
    settings.miss_log = tmp_path / "misses.jsonl"
    long = "word " * 1000
    with _client(settings) as client:
        _post(
            client,
            "/v1/score",
            {"steps": [{"subgoal": UNCOVERED, "content": long}], "options": STRICT},
        )
    [line] = _lines(settings.miss_log)
    assert line["content"] == long[:MAX_CONTENT_CHARS] and line["content_chars"] == len(long)


def test_lines_name_the_library_version_that_missed(tmp_path: Path) -> None:
    """After a reload the misses are the new library's: a refresh reads which version missed."""
    grown = tmp_path / "grown"
    shutil.copytree(PROTOTYPES, grown)
    prototype = (grown / "tool_selection.toml").read_text(encoding="utf-8")
    (grown / "tool_selection.toml").write_text(
        prototype.replace("exemplars = [", 'exemplars = [\n  "Pick the tool for the job",', 1),
        encoding="utf-8",
    )
    settings = Settings(
        prototypes_dir=PROTOTYPES,
        cache_dir=tmp_path / "cache",
        api_key="k",
        miss_log=tmp_path / "misses.jsonl",
    )
    with _client(settings) as client:
        client.headers["Authorization"] = "Bearer k"
        _post(client, "/v1/score", _request())
        _post(client, "/v1/admin/reload", {"prototypes_dir": str(grown)})
        _post(client, "/v1/score", _request())
    versions = [line["library_version"] for line in _lines(settings.miss_log)]
    assert versions == [load_library(PROTOTYPES).version, load_library(grown).version]


def test_the_log_rotates_by_size(settings: Settings, tmp_path: Path) -> None:
    settings.miss_log = tmp_path / "misses.jsonl"
    settings.miss_log_max_mb = 2000 / 2**20  # a few lines per file
    settings.miss_log_backups = 50
    with _client(settings) as client:
        for i in range(12):
            _post(client, "/v1/score", _request(metadata={"i": i}))
    files = sorted(tmp_path.glob("misses.jsonl*"))
    assert len(files) > 2
    assert all(f.stat().st_size <= 2000 + 1000 for f in files)  # over by one group at most
    seen = sorted(line["metadata"]["i"] for f in files for line in _lines(f))
    assert seen == list(range(12))


def test_a_write_error_never_fails_a_request(settings: Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings.miss_log = blocker / "misses.jsonl"
    with _client(settings) as client:
        for _ in range(2):
            assert _post(client, "/v1/score", _request())["status"] == "ok"
        deadline = time.monotonic() + 10
        while _failed_lines(client) < 2:  # counted by the writer thread
            assert time.monotonic() < deadline, "the failed writes were never counted"
            time.sleep(0.02)
        assert _failed_lines(client) == 2


def _failed_lines(client: TestClient) -> float:
    metrics = client.get("/metrics").text
    found = re.search(r'^scribe_miss_log_lines_total\{outcome="failed"\} (\S+)$', metrics, re.M)
    assert found is not None, "the miss log's counter is not exported"
    return float(found.group(1))


def test_a_directory_is_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="miss_log is a directory"):
        Settings(prototypes_dir=PROTOTYPES, miss_log=tmp_path)


def test_without_the_setting_nothing_is_written(settings: Settings, tmp_path: Path) -> None:
    with _client(settings) as client:
        _post(client, "/v1/score", _request())
        assert "scribe_miss_log_lines" not in client.get("/metrics").text
    assert list(tmp_path.glob("*.jsonl*")) == []
