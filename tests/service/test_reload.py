"""Swapping the library while the service runs (`POST /v1/admin/reload`, SIGHUP), and requests
pinned to a library version (`options.library_version`).

The library served is the one a response names: each test tells versions apart by a
prototype only the second library has (`sql_query_writing`), whose exemplar is the very
subgoal the test sends, so a step routes there exactly when the new library scored it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from scribe_client import LibraryVersionError, RewardClient
from scribe_client.protocol import ScoreRequest
from scribe_service.app import create_app
from scribe_service.library import load_library
from scribe_service.pipeline.embed import SentenceTransformerEmbedder, Vectors
from scribe_service.pipeline.embed_onnx import OnnxEmbedder
from scribe_service.settings import BUNDLED_EMBEDDER, Settings
from support import (
    PROTOTYPES,
    FakeEmbedder,
    FakeJudge,
    ScriptedJudgeHandler,
    free_port,
    stop,
    uvicorn_in_thread,
    wait_for,
)

KEY = "reload-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
NEW_ID = "sql_query_writing"
SQL_SUBGOAL = "Write the SQL query joining the orders table"
SQL_PROTOTYPE = f"""id = "{NEW_ID}"
name = "SQL query writing"
domain = "tool_use"
usage_context = '''When the step writes a SQL query against the database
to fetch what the task needs.'''
reasoning_pattern = '''A careful agent names the right tables, joins on the keys
that relate them, filters with the task's constraints and selects only the columns it needs.'''
exemplars = [
  "{SQL_SUBGOAL}",
  "Select the customers who ordered last month with a SQL query",
  "Group the sales rows by region in SQL",
  "Filter the SQL query on the order date",
  "Count the rows of the users table with SQL",
]

[levels]
3 = "A correct query: right tables, joins, filters and columns."
2 = "A correct query with a harmless inefficiency or an extra column."
1 = "A wrong join or filter changes the rows returned."
0 = "No query, or one against tables the task does not have."

[[failure_modes]]
id = "wrong_join"
description = "Joins tables on columns that do not relate them, duplicating or losing rows."
max_score = 1
"""
SQL_REQUEST = {"steps": [{"subgoal": SQL_SUBGOAL, "content": "SELECT * FROM orders o JOIN c"}]}


def _library(tmp_path: Path, name: str, *, with_sql: bool) -> Path:
    directory = tmp_path / name
    shutil.copytree(PROTOTYPES, directory)
    if with_sql:
        (directory / f"{NEW_ID}.toml").write_text(SQL_PROTOTYPE, encoding="utf-8")
    return directory


@pytest.fixture
def libraries(tmp_path: Path) -> tuple[Path, Path]:
    """The library served at start (v1) and one with the SQL prototype added (v2)."""
    return _library(tmp_path, "v1", with_sql=False), _library(tmp_path, "v2", with_sql=True)


def _settings(tmp_path: Path, prototypes: Path, **overrides: Any) -> Settings:
    return Settings(
        prototypes_dir=prototypes, cache_dir=tmp_path / "cache", api_key=KEY, **overrides
    )


def _client(settings: Settings, judge: FakeJudge | None = None) -> TestClient:
    app = create_app(settings, embedder=FakeEmbedder(), judge_backend=judge or FakeJudge())
    return TestClient(app, headers=AUTH)


def _version(directory: Path) -> str:
    return load_library(directory).version


def _routed_to_new(answer: dict[str, Any]) -> bool:
    return bool(answer["steps"][0]["prototype_id"] == NEW_ID)


# --- POST /v1/admin/reload ----------------------------------------------------------------


def test_reload_swaps_the_library_and_names_the_new_version(
    tmp_path: Path, libraries: tuple[Path, Path]
) -> None:
    v1, v2 = libraries
    settings = _settings(tmp_path, v1, score_log=tmp_path / "scores.jsonl")
    with _client(settings) as client:
        before = client.post("/v1/score", json=SQL_REQUEST).json()
        assert before["library_version"] == _version(v1) and not _routed_to_new(before)

        answer = client.post("/v1/admin/reload", json={"prototypes_dir": str(v2)})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "library_version": _version(v2),
            "previous_version": _version(v1),
            "changed": True,
            "prototypes_dir": str(v2),
            "prototypes": len(load_library(v2).prototypes),
            "exemplars": sum(len(p.exemplars) for p in load_library(v2).routable()),
        }
        after = client.post("/v1/score", json=SQL_REQUEST).json()
        assert after["library_version"] == _version(v2) and _routed_to_new(after)
        # Every route reads the swapped library, not only scoring.
        assert client.get("/readyz").json()["library_version"] == _version(v2)
        listed = client.get("/v1/prototypes").json()
        assert listed["library_version"] == _version(v2)
        assert NEW_ID in {p["id"] for p in listed["prototypes"]}
        assert client.get(f"/v1/prototypes/{NEW_ID}").status_code == 200
        routed = client.post("/v1/route", json=SQL_REQUEST).json()
        assert routed["library_version"] == _version(v2)
        assert routed["steps"][0]["prototype_id"] == NEW_ID
        metrics = client.get("/metrics").text
        assert 'scribe_library_reloads_total{outcome="ok"} 1.0' in metrics
    # The score log knows the new prototype's domain (it learns each library swapped in).
    logged = [json.loads(line) for line in settings.score_log.read_text().splitlines()]
    assert [
        (line["library_version"], line["domain"])
        for line in logged
        if line["prototype_id"] == NEW_ID
    ] == [(_version(v2), "tool_use")]


def test_reload_without_a_body_reads_the_serving_directory_again(tmp_path: Path) -> None:
    served = _library(tmp_path, "served", with_sql=False)
    with _client(_settings(tmp_path, served)) as client:
        same = client.post("/v1/admin/reload").json()
        assert same["changed"] is False and same["library_version"] == _version(PROTOTYPES)

        # A refresh that rewrote the directory in place is picked up by a bare reload.
        (served / f"{NEW_ID}.toml").write_text(SQL_PROTOTYPE, encoding="utf-8")
        grown = client.post("/v1/admin/reload", json={}).json()
        assert grown["changed"] is True and grown["library_version"] == _version(served)
        assert grown["prototypes_dir"] == str(served)
        assert _routed_to_new(client.post("/v1/score", json=SQL_REQUEST).json())
        metrics = client.get("/metrics").text
        assert 'scribe_library_reloads_total{outcome="unchanged"} 1.0' in metrics


def test_a_directory_swapped_in_stays_the_one_a_bare_reload_reads(
    tmp_path: Path, libraries: tuple[Path, Path]
) -> None:
    v1, v2 = libraries
    with _client(_settings(tmp_path, v1)) as client:
        client.post("/v1/admin/reload", json={"prototypes_dir": str(v2)})
        again = client.post("/v1/admin/reload").json()
    assert again["prototypes_dir"] == str(v2) and again["library_version"] == _version(v2)


@pytest.mark.parametrize(
    ("breakage", "names"),
    [
        pytest.param(
            lambda d: (d / "tool_selection.toml").write_text(
                (d / "tool_selection.toml")
                .read_text(encoding="utf-8")
                .replace("max_score = 1", "max_score = 7", 1),
                encoding="utf-8",
            ),
            ["tool_selection.toml", "failure_modes.1.max_score"],
            id="field-out-of-range",
        ),
        pytest.param(
            lambda d: (d / "broken.toml").write_text('id = "broken"\nname = ', encoding="utf-8"),
            ["broken.toml", "not valid TOML"],
            id="not-toml",
        ),
        pytest.param(
            lambda d: (d / "templates" / "judge_user.txt").unlink(),
            ["judge_user.txt", "judge template missing"],
            id="template-missing",
        ),
        pytest.param(
            lambda d: shutil.rmtree(d), ["prototypes directory not found"], id="no-directory"
        ),
    ],
)
def test_an_invalid_library_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, breakage: Any, names: list[str]
) -> None:
    bad = _library(tmp_path, "bad", with_sql=True)
    breakage(bad)
    with _client(_settings(tmp_path, PROTOTYPES)) as client:
        answer = client.post("/v1/admin/reload", json={"prototypes_dir": str(bad)})
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["type"] == "invalid_library" and error["param"] == "prototypes_dir"
        for name in names:
            assert name in error["message"]
        assert f"version {_version(PROTOTYPES)} keeps serving" in error["message"]
        scored = client.post("/v1/score", json=SQL_REQUEST)
        assert scored.status_code == 200
        assert scored.json()["library_version"] == _version(PROTOTYPES)
        assert client.get("/readyz").json()["library_version"] == _version(PROTOTYPES)
        # A refused directory does not become the one a bare reload reads.
        assert client.post("/v1/admin/reload").json()["prototypes_dir"] == str(PROTOTYPES)
        metrics = client.get("/metrics").text
        assert 'scribe_library_reloads_total{outcome="invalid"} 1.0' in metrics


def test_reload_needs_the_api_key(tmp_path: Path, libraries: tuple[Path, Path]) -> None:
    v1, v2 = libraries
    with _client(_settings(tmp_path, v1)) as client:
        anonymous = client.post(
            "/v1/admin/reload", json={"prototypes_dir": str(v2)}, headers={"Authorization": ""}
        )
        assert anonymous.status_code == 401
        assert client.get("/readyz").json()["library_version"] == _version(v1)
    # A service without a key has no caller entitled to swap its rubrics.
    keyless = Settings(prototypes_dir=v1, cache_dir=tmp_path / "cache")
    app = create_app(keyless, embedder=FakeEmbedder(), judge_backend=FakeJudge())
    with TestClient(app) as client:
        refused = client.post("/v1/admin/reload", json={"prototypes_dir": str(v2)})
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "forbidden"
        assert "SCRIBE_API_KEY" in refused.json()["error"]["message"]
        assert client.get("/readyz").json()["library_version"] == _version(v1)


def test_an_unknown_body_field_is_a_422(tmp_path: Path) -> None:
    with _client(_settings(tmp_path, PROTOTYPES)) as client:
        answer = client.post("/v1/admin/reload", json={"directory": "/tmp"})
    assert answer.status_code == 422
    assert answer.json()["error"]["param"] == "directory"


class _SlowIndexing(FakeEmbedder):
    """Takes its time over a library's exemplars (subgoals stay fast), so two reloads sent
    together are certain to overlap."""

    def encode(self, texts: Sequence[str]) -> Vectors:
        if len(texts) > 1:  # a chunk of exemplars (the test sends no subgoals)
            time.sleep(0.05)
        return super().encode(texts)


def test_concurrent_reloads_are_serialised(tmp_path: Path, libraries: tuple[Path, Path]) -> None:
    v1, v2 = libraries
    v3 = _library(tmp_path, "v3", with_sql=True)
    (v3 / "extra.toml").write_text(
        SQL_PROTOTYPE.replace(NEW_ID, "extra").replace("SQL", "Sequel"), encoding="utf-8"
    )
    app = create_app(_settings(tmp_path, v1), embedder=_SlowIndexing(), judge_backend=FakeJudge())

    def reload(directory: Path) -> dict[str, Any]:
        answer = httpx.post(
            f"{url}/v1/admin/reload",
            json={"prototypes_dir": str(directory)},
            headers=AUTH,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    with uvicorn_in_thread(app) as url, ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(reload, (v2, v3)))
        served = httpx.get(f"{url}/readyz", headers=AUTH).json()["library_version"]
    chain = {a["previous_version"]: a["library_version"] for a in answers}
    # One ran after the other, v1 → one of them → the other, which serves now; interleaved,
    # both would have swapped from v1.
    assert len(chain) == 2
    middle = chain[_version(v1)]
    assert {middle, chain[middle]} == {_version(v2), _version(v3)}
    assert served == chain[middle]


# --- options.library_version --------------------------------------------------------------


def test_a_pinned_request_is_scored_only_by_its_version(
    tmp_path: Path, libraries: tuple[Path, Path]
) -> None:
    v1, v2 = libraries
    pinned_v1 = {**SQL_REQUEST, "options": {"library_version": _version(v1)}}
    with _client(_settings(tmp_path, v1)) as client:
        ok = client.post("/v1/score", json=pinned_v1)
        assert ok.status_code == 200 and ok.json()["library_version"] == _version(v1)

        client.post("/v1/admin/reload", json={"prototypes_dir": str(v2)})
        refused = client.post("/v1/score", json=pinned_v1)
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["type"] == "library_version_mismatch"
        assert error["param"] == "options.library_version"
        assert _version(v2) in error["message"] and _version(v1) in error["message"]

        batch = client.post(
            "/v1/score/batch",
            json={"requests": [SQL_REQUEST, {**SQL_REQUEST, **pinned_v1}]},
        )
        assert batch.status_code == 409
        assert batch.json()["error"]["param"] == "requests[1].options.library_version"

        with RewardClient("http://t", http_client=client) as scribe:
            with pytest.raises(LibraryVersionError, match=_version(v2)):
                scribe.score(ScoreRequest.model_validate(pinned_v1))

        pinned_v2 = {**SQL_REQUEST, "options": {"library_version": _version(v2)}}
        answer = client.post("/v1/score", json=pinned_v2)
        assert answer.status_code == 200 and _routed_to_new(answer.json())


def test_in_flight_requests_finish_on_the_version_they_started_with(
    tmp_path: Path, libraries: tuple[Path, Path]
) -> None:
    v1, v2 = libraries
    judge = FakeJudge(delay=2.0)
    app = create_app(_settings(tmp_path, v1), embedder=FakeEmbedder(), judge_backend=judge)
    with uvicorn_in_thread(app) as url, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(
            httpx.post, f"{url}/v1/score", json=SQL_REQUEST, headers=AUTH, timeout=30
        )
        deadline = time.monotonic() + 20
        while not judge.prompts:  # routed on v1, now waiting for the judge
            assert time.monotonic() < deadline, "the request never reached the judge"
            time.sleep(0.01)
        reloaded = httpx.post(
            f"{url}/v1/admin/reload", json={"prototypes_dir": str(v2)}, headers=AUTH
        )
        assert reloaded.status_code == 200
        assert not in_flight.done()  # the swap did not wait for it, nor it for the swap
        old = in_flight.result()
        new = httpx.post(f"{url}/v1/score", json=SQL_REQUEST, headers=AUTH, timeout=30)
    assert old.status_code == 200 and new.status_code == 200
    assert old.json()["library_version"] == _version(v1) and not _routed_to_new(old.json())
    assert new.json()["library_version"] == _version(v2) and _routed_to_new(new.json())


# --- real components ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(BUNDLED_EMBEDDER)


@pytest.mark.real
def test_reload_under_concurrent_load_drops_nothing(
    tmp_path: Path, libraries: tuple[Path, Path], minilm: SentenceTransformerEmbedder
) -> None:
    """Real uvicorn, real MiniLM and FAISS; a judge that answers fast. Clients score without
    pause while the library is swapped back and forth: every request is answered 200 with
    every step judged, each names the version it used, and its routing agrees with it."""
    v1, v2 = libraries
    settings = _settings(tmp_path, v1, embedding_cache_entries=0)
    app = create_app(settings, embedder=minilm, judge_backend=FakeJudge(delay=0.02))
    answers: list[httpx.Response] = []
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
            while not stop.is_set():
                answers.append(client.post("/v1/score", json=SQL_REQUEST))

    reloads = []
    with uvicorn_in_thread(app) as url, ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(client_loop) for _ in range(4)]
        for directory in (v2, v1, v2, v1, v2):
            time.sleep(0.3)
            reloaded = httpx.post(
                f"{url}/v1/admin/reload",
                json={"prototypes_dir": str(directory)},
                headers=AUTH,
                timeout=120,
            )
            assert reloaded.status_code == 200, reloaded.text
            reloads.append(reloaded.json()["library_version"])
        time.sleep(0.3)
        stop.set()
        for worker in workers:
            worker.result()
    versions = {_version(v1): False, _version(v2): True}
    assert reloads == [_version(d) for d in (v2, v1, v2, v1, v2)]
    assert len(answers) >= 20
    assert [a.status_code for a in answers] == [200] * len(answers)
    bodies = [a.json() for a in answers]
    assert all(b["status"] == "ok" for b in bodies)
    assert {b["library_version"] for b in bodies} == set(versions)
    for body in bodies:
        assert _routed_to_new(body) is versions[body["library_version"]], body


def _exemplars(directory: Path) -> list[str]:
    return [e for p in load_library(directory).routable() for e in p.exemplars]


@pytest.mark.real
def test_a_reload_reads_the_exemplar_vectors_stored_before(
    tmp_path: Path, libraries: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configured embedder (ONNX MiniLM), every text its model encodes recorded: a
    library's exemplars are encoded once, at start or at the first reload to it; swapping
    back to a library seen before encodes none of them."""
    v1, v2 = libraries
    encoded: list[str] = []
    encode = OnnxEmbedder.encode

    def recorded(self: OnnxEmbedder, texts: Sequence[str]) -> Vectors:
        encoded.extend(texts)
        return encode(self, texts)

    monkeypatch.setattr(OnnxEmbedder, "encode", recorded)
    app = create_app(_settings(tmp_path, v1), judge_backend=FakeJudge())

    def reload(client: TestClient, directory: Path) -> list[str]:
        encoded.clear()
        answer = client.post("/v1/admin/reload", json={"prototypes_dir": str(directory)})
        assert answer.status_code == 200 and answer.json()["changed"], answer.text
        return list(encoded)

    with TestClient(app, headers=AUTH) as client:
        assert encoded == _exemplars(v1)  # a fresh cache_dir: the start encodes them
        assert reload(client, v2) == _exemplars(v2)  # new exemplars: encoded (in chunks)
        assert reload(client, v1) == []  # stored at start
        assert reload(client, v2) == []  # stored by the first reload
        # The vectors read back route as the encoded ones did.
        assert _routed_to_new(client.post("/v1/score", json=SQL_REQUEST).json())


class _Judge(ScriptedJudgeHandler):
    def reply(self) -> str:
        return '{"rationale": "fine", "failure_modes": [], "score": 3}'


@pytest.fixture
def judge_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _serving(url: str) -> str | None:
    version: str | None = httpx.get(f"{url}/readyz", headers=AUTH, timeout=10).json()[
        "library_version"
    ]
    return version


def _wait_for(predicate: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.real
def test_sighup_reloads_a_running_scribe_serve(tmp_path: Path, judge_url: str) -> None:
    """`scribe serve` as run in production (its own process, real uvicorn, MiniLM, FAISS):
    SIGHUP reloads the serving directory; a broken one is refused and logged with the file and
    field while the service carries on."""
    served = _library(tmp_path, "served", with_sql=False)
    port = free_port()
    env = {
        **os.environ,
        "SCRIBE_PORT": str(port),
        "SCRIBE_PROTOTYPES_DIR": str(served),
        "SCRIBE_JUDGE_URL": judge_url,
        "SCRIBE_API_KEY": KEY,
    }
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "scribe_service.cli", "serve"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(f"{url}/healthz", process, timeout=180)
            assert _serving(url) == _version(PROTOTYPES)

            (served / f"{NEW_ID}.toml").write_text(SQL_PROTOTYPE, encoding="utf-8")
            grown = _version(served)
            process.send_signal(signal.SIGHUP)
            _wait_for(lambda: _serving(url) == grown, "the SIGHUP reload")
            answer = httpx.post(f"{url}/v1/score", json=SQL_REQUEST, headers=AUTH, timeout=60)
            assert answer.status_code == 200 and _routed_to_new(answer.json())

            (served / f"{NEW_ID}.toml").write_text(
                SQL_PROTOTYPE.replace("max_score = 1", "max_score = 9"), encoding="utf-8"
            )
            process.send_signal(signal.SIGHUP)
            _wait_for(lambda: "not reloaded" in log.read_text(), "the refusal in the log")
            refusal = next(line for line in log.read_text().splitlines() if "not reloaded" in line)
            assert f"{NEW_ID}.toml" in refusal and "failure_modes.0.max_score" in refusal
            assert process.poll() is None and _serving(url) == grown
            answer = httpx.post(f"{url}/v1/score", json=SQL_REQUEST, headers=AUTH, timeout=60)
            assert answer.status_code == 200 and _routed_to_new(answer.json())
        finally:
            stop(process)
