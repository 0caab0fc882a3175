"""The SSE encoding of token events: the pre-encoded fast path says exactly what the generic one does."""

import json

import pytest

from corral.api.convert import ai_chunk
from corral.api.sse import encode
from corral.api.streams import Mapper, RawJSON
from corral.store.base import Event, RunRecord, RunStatus

RUN = RunRecord(
    id="run-1", session_id="thread-1", tenant="t", principal=None, roles=(), agent="chat", agent_version="v",
    input=None, limits={}, status=RunStatus.RUNNING,
)  # fmt: skip


@pytest.mark.parametrize("text", ["hello ", 'say "hi"\n', "naïve — 東京 ", "\x00 nul", "\\", ""])
async def test_token_fast_path_matches_the_generic_encoding(text):
    mapper = Mapper(None, RUN, ["messages-tuple"], "t")  # type: ignore[arg-type]  # tokens need no state
    for seq in ("3", "3", "4.1"):  # the frame is cached per step and rebuilt for the next
        (part,) = await mapper.map(Event(RUN.id, 9, "token", {"seq": seq, "text": text}))
        assert part[0] == "messages" and isinstance(part[1], RawJSON)
        meta = {
            "run_id": RUN.id, "thread_id": RUN.session_id, "graph_id": RUN.agent,
            "langgraph_node": RUN.agent, "langgraph_step": seq,
        }  # fmt: skip
        expected = [ai_chunk(text, f"run-{RUN.id}-{seq}"), meta]
        assert json.loads(part[1]) == expected
        assert encode(*part, 72) == encode("messages", expected, 72)
