"""The build journal: a reply is kept as it arrives and read back by the next run."""

from __future__ import annotations

from pathlib import Path

import pytest

from scribe_service.library_build.journal import JournaledBackend, read_journal
from scribe_service.pipeline.backends.base import Messages, Sampling
from scribe_service.pipeline.judge_errors import JudgeHTTPError
from support import FakeJudge

pytestmark = pytest.mark.anyio
SCHEMA = {"type": "object"}
ASK: Messages = [{"role": "user", "content": "Name the skill."}]


async def test_a_reply_is_journaled_and_read_back_by_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "lib.journal.jsonl"
    first = JournaledBackend(FakeJudge(replies=['{"subgoal": "a"}']), path)
    assert (await first.complete(ASK, SCHEMA, Sampling())).text == '{"subgoal": "a"}'
    again = FakeJudge(replies=['{"subgoal": "b"}', '{"subgoal": "c"}'])
    second = JournaledBackend(again, path)
    assert second.resumed == 1
    assert (await second.complete(ASK, SCHEMA, Sampling())).text == '{"subgoal": "a"}'
    assert again.prompts == []  # answered from the journal
    # Any difference in the call is another call: asked, and journaled in turn.
    assert (await second.complete(ASK, SCHEMA, Sampling(seed=1))).text == '{"subgoal": "b"}'
    other = [{"role": "user", "content": "Name it."}]
    assert (await second.complete(other, SCHEMA, Sampling())).text == '{"subgoal": "c"}'
    assert len(again.prompts) == 2 and len(read_journal(path)) == 3
    second.discard()
    assert not path.exists()


async def test_a_failed_call_is_not_journaled_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "lib.journal.jsonl"
    backend = JournaledBackend(FakeJudge(replies=[JudgeHTTPError(503, "busy")]), path)
    with pytest.raises(JudgeHTTPError):
        await backend.complete(ASK, SCHEMA, Sampling())
    assert read_journal(path) == {}
    path.write_text('{"key": "k", "text": "t"}\n{"key": "torn', encoding="utf-8")
    assert read_journal(path) == {"k": "t"}
