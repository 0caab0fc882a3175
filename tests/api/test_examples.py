"""The example agents as a LangGraph client uses them (a conversation that remembers, a hand-off to a
human, a research fan-out), and `make run`'s banner: its curl and langgraph-sdk examples, pasted
as printed, against `corral serve examples.app:app --dev` as a real process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from api_server import serve
from langgraph_sdk import get_client

from corral import SimModel
from corral.models import ChatRequest, Role
from examples.research import research
from examples.sim_responder import respond
from examples.support import support, support_bot
from helpers import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture
def examples(database_url):
    """The example agents on the scripted responder, with every model request recorded."""
    requests: list[ChatRequest] = []

    def reply(request: ChatRequest):
        requests.append(request)
        return respond(request)

    model = SimModel(replies=reply, tokens_per_second=1000)
    for server in serve(database_url, agents=[support, support_bot, research], models={"default": model}):
        yield server, requests


async def test_support_answers_from_its_tools_and_remembers_the_conversation(examples):
    server, requests = examples
    async with get_client(url=server.url, api_key=server.keys["a"]) as client:
        tid = (await client.threads.create())["thread_id"]
        first = await client.runs.wait(tid, "support", input=user("Where is my order A-1001?"))
        shipped = {"order_id": "A-1001", "found": True, "status": "shipped", "carrier": "DHL", "eta": "2 days"}
        assert first["orders"] == [shipped]
        answer = first["messages"][-1]
        assert answer["type"] == "ai" and "order A-1001 is shipped with DHL" in answer["content"], answer

        await client.runs.wait(tid, "support", input=user("How do returns work?"))
        sent = [(m.role, m.content) for m in requests[-1].messages]
        assert (Role.USER, "Where is my order A-1001?") in sent  # the earlier turn reached the model
        assert (Role.ASSISTANT, answer["content"]) in sent
        assert "within 30 days" in sent[-1][1]  # the knowledge base's article, in this turn's prompt

        state = await client.threads.get_state(tid)
        assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai", "human", "ai"]
        assert (await client.threads.get(tid))["status"] == "idle"


async def test_support_hands_off_to_a_human_and_resumes_with_the_answer(examples):
    server, _ = examples
    async with get_client(url=server.url, api_key=server.keys["a"]) as client:
        tid = (await client.threads.create())["thread_id"]
        parts = [
            p
            async for p in client.runs.stream(
                tid, "support", input=user("I want a human, please"), stream_mode=["custom", "values"]
            )
        ]
        handoffs = [p.data for p in parts if p.event == "custom"]
        assert handoffs == [{"name": "handoff", "data": {"session_id": tid, "reason": "I want a human, please"}}]
        assert [p.event for p in parts][-2:] == ["values", "end"]
        assert "__interrupt__" in parts[-2].data
        assert (await client.threads.get(tid))["status"] == "interrupted"

        done = await client.runs.wait(tid, "support", command={"resume": {"text": "Refund approved."}})
        assert done["by"] == "human"
        assert done["messages"][-1]["type"] == "ai" and done["messages"][-1]["content"] == "Refund approved."
        assert (await client.threads.get(tid))["status"] == "idle"
        runs = await client.runs.list(tid)
        assert [r["status"] for r in runs] == ["success"]  # the resume continued the same run


async def test_research_fans_out_from_a_user_message(examples):
    server, requests = examples
    async with get_client(url=server.url, api_key=server.keys["a"]) as client:
        parts = [
            p
            async for p in client.runs.stream(
                None, "research", input=user("Why do builds fail?"), stream_mode=["custom", "values"]
            )
        ]
    findings = sorted(p.data["data"]["sub_question"] for p in parts if p.event == "custom")
    assert findings == [f"What is {a} of: Why do builds fail?" for a in ("the cause", "the cost", "the fix")]
    assert parts[-1].event == "end" and parts[-1].data["status"] == "success"
    final = parts[-2].data
    assert final["sub_questions"] and final["critique"]
    assert final["messages"][-1]["type"] == "ai" and "Critique:" in final["messages"][-1]["content"]
    assert len(requests) == 6  # plan, three sub-questions in parallel, synthesis, critique


async def test_an_example_without_a_message_fails_with_a_clear_error(examples):
    server, _ = examples
    async with get_client(url=server.url, api_key=server.keys["a"]) as client:
        out = await client.runs.wait(None, "support", input={}, raise_error=False)
        assert out["__error__"]["error"] == "ValueError"
        assert "support needs a user message" in out["__error__"]["message"]
        with pytest.raises(Exception, match="research needs a question"):  # as the client raises it by default
            await client.runs.wait(None, "research", input={"messages": []})


def _banner(log: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while "asyncio.run(main())" not in (text := log.read_text()):
        assert proc.poll() is None, f"corral serve exited:\n{text}"
        assert time.monotonic() < deadline, f"no banner within {timeout}s:\n{text}"
        time.sleep(0.1)
    return text


def _sse(text: str) -> list[tuple[str, object]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_the_banners_examples_work_as_printed(tmp_path):
    """What `make run` starts and prints: the curl and langgraph-sdk examples, pasted as they are,
    stream a run that succeeds, on the default model route (the embedded model when installed)."""
    assert shutil.which("curl"), "the banner's examples use curl"
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    db = f"sqlite:///{tmp_path / 'c.db'}"
    cmd = ["serve", "examples.app:app", "--dev", "--port", str(port), "--database-url", db]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral", *cmd], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        text = _banner(log, proc)
        assert re.search(r"model route 'default': (embedded|sim)", text), text
        curl_block = text.split("curl:\n", 1)[1].split("\n\n", 1)[0]
        search, stream = re.split(r"\n(?=  curl )", curl_block)
        found = subprocess.run(["bash", "-c", search], capture_output=True, text=True, timeout=30, check=True)
        assert {a["graph_id"] for a in json.loads(found.stdout)} == {"support", "support_bot", "research"}

        streamed = subprocess.run(["bash", "-c", stream], capture_output=True, text=True, timeout=120, check=True)
        events = _sse(streamed.stdout)
        assert events[0][0] == "metadata" and events[-1][0] == "end", events
        assert events[-1][1]["status"] == "success", events[-3:]
        assert any(name == "messages" for name, _ in events)  # tokens, as the model produced them
        assert "A-1001" in json.dumps(events[-2][1])  # the final values: the order the tool found

        snippet = textwrap.dedent(text.split("langgraph-sdk (pip install langgraph-sdk):\n", 1)[1])
        ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        printed = [line.split(" ", 1)[0] for line in ran.stdout.splitlines() if line]
        assert printed[0] == "metadata" and "messages" in printed, ran.stdout[:2000]
    finally:
        stop_process(proc)
