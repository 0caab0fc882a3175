"""The unmodified langgraph-sdk client against Corral over real HTTP: assistants, threads, runs."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError

from corral.api.convert import assistant_id

HELLO = {"messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
async def client(server):
    async with get_client(url=server.url, api_key=server.keys["a"]) as c:
        yield c


async def test_assistants_search_get_and_schemas(client):
    found = await client.assistants.search(limit=100)
    by_name = {a["graph_id"]: a for a in found}
    assert set(by_name) == {"chat", "slow", "hitl", "fails", "who"}
    chat = by_name["chat"]
    assert chat["assistant_id"] == assistant_id("chat") == str(uuid.UUID(chat["assistant_id"]))
    assert (await client.assistants.get(chat["assistant_id"]))["graph_id"] == "chat"
    assert (await client.assistants.get("chat"))["assistant_id"] == chat["assistant_id"]  # the name works too
    assert [a["graph_id"] for a in await client.assistants.search(graph_id="slow")] == ["slow"]
    schemas = await client.assistants.get_schemas("chat")
    assert schemas["graph_id"] == "chat" and "messages" in schemas["state_schema"]["properties"]
    with pytest.raises(NotFoundError):
        await client.assistants.get("nobody")


async def test_stream_run_events_in_order(client):
    thread = await client.threads.create(metadata={"purpose": "test"})
    assert thread["status"] == "idle" and thread["metadata"]["purpose"] == "test"
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "chat", input=HELLO, stream_mode=["values", "messages-tuple", "updates"]
        )
    ]
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[1] == "values" and events[-1] == "end"
    assert "messages" in events and "updates" in events
    updates = [(i, p.data) for i, p in enumerate(parts) if p.event == "updates"]
    assert [next(iter(u)) for _, u in updates] == ["history", "default", "chat"]  # steps, then the agent's output
    chat_step = updates[1][0]
    assert events.index("messages") < chat_step and "messages" not in events[chat_step:]
    assert events[-2] == "values"
    ids = [int(p.id) for p in parts]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # strictly increasing
    metadata = parts[0].data
    assert metadata["attempt"] == 1 and uuid.UUID(metadata["run_id"])
    start = parts[1].data["messages"]
    assert [m["type"] for m in start] == ["human"] and start[0]["content"] == "hello there"
    text = "".join(p.data[0]["content"] for p in parts if p.event == "messages")
    assert text == "You said: hello there"
    chunk, meta = next(p.data for p in parts if p.event == "messages")
    assert chunk["type"] == "AIMessageChunk" and meta["run_id"] == metadata["run_id"]
    final = parts[-2].data["messages"]
    assert [m["type"] for m in final] == ["human", "ai"] and final[1]["content"] == "You said: hello there"
    assert all(m["id"] for m in final)
    state = await client.threads.get_state(thread["thread_id"])
    assert [m["content"] for m in state["values"]["messages"]] == ["hello there", "You said: hello there"]
    assert state["values"]["messages"] == final  # the same ids every time
    run = await client.runs.get(thread["thread_id"], metadata["run_id"])
    assert run["status"] == "success" and run["metadata"]["corral_status"] == "succeeded"
    assert (await client.threads.get(thread["thread_id"]))["status"] == "idle"


async def test_wait_and_stateless_runs(client):
    thread = await client.threads.create()
    values = await client.runs.wait(thread["thread_id"], "chat", input=HELLO)
    assert [m["type"] for m in values["messages"]] == ["human", "ai"]
    more = {"messages": [{"type": "human", "content": "more"}]}
    again = await client.runs.wait(thread["thread_id"], "chat", input=more)
    assert [m["content"] for m in again["messages"]][-2:] == ["more", "You said: more"]
    assert len(again["messages"]) == 4  # the conversation accumulates
    created = []
    stateless = await client.runs.wait(None, "chat", input=HELLO, on_run_created=created.append)
    assert stateless["messages"][-1]["content"] == "You said: hello there"
    temporary = created[0]["thread_id"]
    for _ in range(100):  # the temporary thread goes once the run has ended and nobody reads it
        try:
            await client.threads.get(temporary)
        except NotFoundError:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the stateless run's thread was not deleted")
    kept = []
    await client.runs.wait(None, "chat", input=HELLO, on_completion="keep", on_run_created=kept.append)
    assert len((await client.threads.get(kept[0]["thread_id"]))["values"]["messages"]) == 2
    parts = [p async for p in client.runs.stream(None, "chat", input=HELLO, stream_mode="values")]
    assert [p.event for p in parts] == ["metadata", "values", "values", "end"]


async def test_background_run_join_and_list(client):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "slow", input={"steps": 3, "delay": 0.05})
    assert run["status"] == "pending" and run["thread_id"] == thread["thread_id"]
    assert run["assistant_id"] == assistant_id("slow")
    values = await client.runs.join(thread["thread_id"], run["run_id"])
    assert values["messages"][-1]["content"] == "took 3 steps" and values["steps"] == 3
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "success"
    listed = await client.runs.list(thread["thread_id"])
    assert [r["run_id"] for r in listed] == [run["run_id"]]
    assert await client.runs.list(thread["thread_id"], status="pending") == []


async def test_failed_run_reports_error(client):
    thread = await client.threads.create()
    parts = [p async for p in client.runs.stream(thread["thread_id"], "fails", input={})]
    assert parts[-1].event == "end"
    error = next(p.data for p in parts if p.event == "error")
    assert error == {"error": "ValueError", "message": "boom"}
    with pytest.raises(Exception, match="ValueError: boom"):
        await client.runs.wait(thread["thread_id"], "fails", input={})
    assert (await client.threads.get(thread["thread_id"]))["status"] == "error"
    [latest, *_] = await client.runs.list(thread["thread_id"])
    assert latest["status"] == "error" and latest["metadata"]["corral_error"]["type"] == "ValueError"


async def test_thread_crud_search_state_history(client):
    thread = await client.threads.create(metadata={"team": "x"})
    tid = thread["thread_id"]
    with pytest.raises(ConflictError):
        await client.threads.create(thread_id=tid)
    assert (await client.threads.create(thread_id=tid, if_exists="do_nothing"))["thread_id"] == tid
    patched = await client.threads.update(tid, metadata={"tier": "gold"})
    assert patched["metadata"] == {"team": "x", "tier": "gold"}
    await client.runs.wait(tid, "chat", input=HELLO)
    found = await client.threads.search(metadata={"tier": "gold"})
    assert [t["thread_id"] for t in found] == [tid]
    assert await client.threads.count(metadata={"tier": "gold"}) == 1
    assert [t["thread_id"] for t in await client.threads.search(ids=[tid])] == [tid]
    edit = {"messages": [{"type": "human", "content": "edited in"}], "mood": "ok"}
    update = await client.threads.update_state(tid, edit)
    assert update["checkpoint"]["checkpoint_id"]
    state = await client.threads.get_state(tid)
    assert state["values"]["mood"] == "ok"
    assert state["values"]["messages"][-1]["content"] == "edited in"
    assert state["checkpoint"]["checkpoint_id"] == update["checkpoint"]["checkpoint_id"]
    history = await client.threads.get_history(tid, limit=10)
    assert len(history) == 2 and history[0]["checkpoint"] == state["checkpoint"]
    assert history[0]["parent_checkpoint"] == history[1]["checkpoint"]
    older = await client.threads.get_state(tid, checkpoint_id=history[1]["checkpoint"]["checkpoint_id"])
    assert "mood" not in older["values"] and len(older["values"]["messages"]) == 2
    before = await client.threads.get_history(tid, before=history[0]["checkpoint"])
    assert [h["checkpoint"] for h in before] == [history[1]["checkpoint"]]
    await client.threads.delete(tid)
    with pytest.raises(NotFoundError):
        await client.threads.get(tid)


async def test_store_items(client):
    await client.store.put_item(["users", "u1"], "prefs", {"theme": "dark", "lang": "en"})
    await client.store.put_item(["users", "u2"], "prefs", {"theme": "light"})
    item = await client.store.get_item(["users", "u1"], "prefs")
    assert item["value"] == {"theme": "dark", "lang": "en"} and item["namespace"] == ["users", "u1"]
    found = await client.store.search_items(["users"], filter={"theme": "light"})
    assert [i["namespace"] for i in found["items"]] == [["users", "u2"]]
    spaces = await client.store.list_namespaces(prefix=["users"])
    assert sorted(spaces["namespaces"]) == [["users", "u1"], ["users", "u2"]]
    await client.store.delete_item(["users", "u1"], "prefs")
    with pytest.raises(NotFoundError):
        await client.store.get_item(["users", "u1"], "prefs")
