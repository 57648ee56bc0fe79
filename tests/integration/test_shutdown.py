"""SIGTERM with a request in flight: `scribe serve` stops accepting, finishes the request,
then exits cleanly. The judge is a real HTTP server that takes its time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from support import PROTOTYPES, ScriptedJudgeHandler, free_port, stop, wait_for

pytestmark = pytest.mark.real

JUDGE_SECONDS = 3.0


class _SlowJudge(ScriptedJudgeHandler):
    def reply(self) -> str:
        time.sleep(JUDGE_SECONDS)
        return json.dumps({"rationale": "fine", "failure_modes": [], "score": 3})


def test_sigterm_finishes_in_flight_requests(tmp_path: Any) -> None:
    judge = ThreadingHTTPServer(("127.0.0.1", 0), _SlowJudge)
    threading.Thread(target=judge.serve_forever, daemon=True).start()
    port = free_port()
    env = {
        **os.environ,
        "SCRIBE_PORT": str(port),
        "SCRIBE_PROTOTYPES_DIR": str(PROTOTYPES),
        "SCRIBE_JUDGE_URL": f"http://127.0.0.1:{judge.server_address[1]}/v1",
    }
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "scribe_service.cli", "serve"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/readyz", process, timeout=120)
        with ThreadPoolExecutor(1) as pool:
            payload = {"steps": [{"content": "2 + 2 = 4"}]}
            in_flight = pool.submit(httpx.post, f"{url}/v1/score", json=payload, timeout=60)
            time.sleep(1.0)  # the request is now waiting on the judge
            process.send_signal(signal.SIGTERM)
            response = in_flight.result()
        assert response.status_code == 200
        assert response.json()["steps"][0]["score"] == 3
        # uvicorn re-raises the signal once shut down, so the parent sees "terminated by SIGTERM".
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Finished server process" in (tmp_path / "serve.log").read_text()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if process.poll() is None:
            stop(process)
        log.close()
        judge.shutdown()
        judge.server_close()
