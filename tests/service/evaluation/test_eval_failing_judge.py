"""`scribe eval labels` in logprob mode against a judge that fails every step, as SmolLM2 does
(most of its probability on a code fence, little on the digits 0-3), over real HTTP: the run
ends with each step an explicit `judge_low_score_mass` failure made with one call, a rerun makes
none, and `retry_failed` asks again once per step."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest

from scribe_service.evaluation.evaluate import Options, Result, evaluate
from scribe_service.settings import Settings
from support import RAR_RUBRIC, FakeEmbedder, ScriptedJudgeHandler, judgment_lines

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "eval" / "agent.jsonl"
ARMS = ["scribe", "generic", "rar", "direct"]
RECORDS, STEPS = 6, 2
TOTAL = RECORDS * STEPS * len(ARMS)
# What SmolLM2 answered on these prompts: the fence first, 4-21 % on the digits.
FIRST_TOKEN = {"```": 0.8, "1": 0.1, "2": 0.05}
MASS = FIRST_TOKEN["1"] + FIRST_TOKEN["2"]
# A hang would otherwise run into pytest's 15-minute timeout; the run takes about a second.
DEADLINE_S = 60


class LowMassJudge(ScriptedJudgeHandler):
    """An OpenAI-compatible judge: instance rubrics as asked, and for a score token a
    distribution that puts `MASS` on the digits. Counts what it is asked, by kind."""

    calls: Counter[str]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("logprobs"):
            self.calls["score_token"] += 1
            top = [{"token": t, "logprob": math.log(p)} for t, p in FIRST_TOKEN.items()]
            logprobs = {"content": [{"token": "```", "logprob": top[0]["logprob"],
                                     "top_logprobs": top}]}  # fmt: skip
            message, finish = {"role": "assistant", "content": "```"}, "length"
        else:
            self.calls["rubric"] += 1
            logprobs, finish = None, "stop"
            message = {"role": "assistant", "content": json.dumps(RAR_RUBRIC)}
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs}
        self._send({"choices": [choice], "usage": {"completion_tokens": 1}})


@pytest.fixture
def judge() -> Iterator[tuple[str, Counter[str]]]:
    handler = type("Handler", (LowMassJudge,), {"calls": Counter()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler.calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def run(out: Path, settings: Settings, retry_failed: bool = False) -> Result:
    options = Options(
        command="labels", data=FIXTURE, out=out, arms=list(ARMS), n_resamples=20,
        concurrency=1, retry_failed=retry_failed, quiet=True,
    )  # fmt: skip
    with anyio.fail_after(DEADLINE_S):
        return await evaluate(options, settings, embedder=FakeEmbedder())


@pytest.mark.anyio
async def test_every_step_fails_once_and_explicitly(
    judge: tuple[str, Counter[str]], settings: Settings, tmp_path: Path
) -> None:
    url, calls = judge
    logprob = settings.model_copy(update={"judge_url": url, "judge_mode": "logprob"})
    out = tmp_path / "report"

    result = await run(out, logprob)
    assert result.judgments_made == TOTAL
    # One call per step: too little mass is final, never retried; RaR writes one rubric a task.
    assert calls == {"score_token": TOTAL, "rubric": RECORDS}
    lines = judgment_lines(out)
    assert len(lines) == TOTAL
    for line in lines:
        assert (line["status"], line["error"], line["score"]) == (
            "failed", "judge_low_score_mass", None
        ), line  # fmt: skip
        assert f"only {MASS:.3f} of the judge's probability" in line["error_message"], line
    for arm in ARMS:
        data = result.summary["arms"][arm]
        assert (data["n"], data["failed"]) == (0, RECORDS * STEPS), arm
        assert data["failed_by_error"] == {"judge_low_score_mass": RECORDS * STEPS}, arm
    assert (out / "report.md").read_text(encoding="utf-8").strip()

    # Failed judgments are results: a rerun asks nothing, `retry_failed` asks each once more.
    calls.clear()
    again = await run(out, logprob)
    assert (again.judgments_made, sum(calls.values())) == (0, 0)
    retried = await run(out, logprob, retry_failed=True)
    assert retried.judgments_made == TOTAL
    assert calls == {"score_token": TOTAL}  # the rubrics were written and are kept
    assert len(judgment_lines(out)) == 2 * TOTAL  # appended: the log is append-only
