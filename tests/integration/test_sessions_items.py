"""Sessions (threads), their values and checkpoints, memory items and API keys, on every backend."""

from __future__ import annotations

import asyncio
import time

import pytest

from corral import Agent, Context, RunStatus, agent
from corral.errors import Conflict, SessionExists, SessionNotFound
from corral.store.base import SessionStatus
from corral.testing import ScriptedModel
from helpers import eventually, make_app


@agent(name="echo")
async def echo(ctx: Context, input: dict) -> dict:
    if input.get("fail"):
        raise ValueError("asked to fail")
    if input.get("wait"):
        await ctx.wait_for_message()
    return {"messages": [{"role": "assistant", "content": f"echo: {input['message']}"}], "last": input["message"]}


async def test_sessions_lifecycle_and_tenancy(database_url):
    async with make_app(database_url, [echo]) as app:
        store, now = app.store, time.time()
        s = await store.create_session("t-1", "acme", "ann", {"topic": "billing"}, now)
        assert s.status is SessionStatus.IDLE and s.values == {} and s.metadata == {"topic": "billing"}
        with pytest.raises(SessionExists):
            await store.create_session("t-1", "acme", "ann", {}, now)
        assert (await store.create_session("t-1", "acme", None, {}, now, if_exists="do_nothing")).id == "t-1"
        with pytest.raises(SessionExists):  # another tenant's id is taken, without revealing anything
            await store.create_session("t-1", "other", None, {}, now, if_exists="do_nothing")
        with pytest.raises(SessionNotFound):
            await store.get_session("t-1", "other")
        updated = await store.update_session("t-1", "acme", now, metadata={"priority": "high"})
        assert updated.metadata == {"topic": "billing", "priority": "high"}
        await store.create_session("t-2", "acme", None, {"topic": "sales"}, now + 1)
        found = await store.search_sessions("acme", metadata={"topic": "billing"})
        assert [x.id for x in found] == ["t-1"]
        assert {x.id for x in await store.search_sessions("acme", limit=10)} == {"t-1", "t-2"}
        assert await store.search_sessions("other") == []
        await store.delete_session("t-2", "acme")
        with pytest.raises(SessionNotFound):
            await store.get_session("t-2", "acme")


async def test_finished_runs_fold_into_values_with_checkpoints(database_url):
    async with make_app(database_url, [echo]) as app:
        store = app.store
        ok = await app.run("echo", {"message": "hi"}, session_id="conv")
        assert ok.ok
        session = await store.get_session("conv", None)
        assert session.values == {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "echo: hi"}],
            "last": "hi",
        }
        assert session.status is SessionStatus.IDLE
        failed = await app.run("echo", {"message": "boom", "fail": True}, session_id="conv")
        assert failed.status is RunStatus.FAILED
        session = await store.get_session("conv", None)
        assert session.status is SessionStatus.ERROR
        assert session.values["messages"][-1] == {"role": "user", "content": "boom"}  # input kept, no output
        checkpoints = await store.list_checkpoints("conv", None)
        assert [c.run_id for c in checkpoints] == [failed.run_id, ok.run_id]  # newest first
        assert len(checkpoints[1].values["messages"]) == 2
        replaced = await store.update_session("conv", None, time.time(), values={"messages": []})
        assert replaced.values == {"messages": []}
        assert len(await store.list_checkpoints("conv", None)) == 3
        with pytest.raises(Conflict):
            run_id = await app.submit("echo", {"message": "x"}, session_id="conv")
            await store.delete_run(run_id, None)


async def test_session_status_follows_its_runs(database_url):
    async with make_app(database_url, [echo]) as app:
        run_id = await app.submit("echo", {"message": "hold", "wait": True}, session_id="st")
        assert (await app.store.get_session("st", None)).status is SessionStatus.BUSY
        worker = app.worker()
        task = asyncio.create_task(worker.run())

        async def interrupted() -> bool:
            return (await app.store.get_session("st", None)).status is SessionStatus.INTERRUPTED

        await eventually(interrupted)
        assert [s.id for s in await app.store.search_sessions(None, status=SessionStatus.INTERRUPTED)] == ["st"]
        await app.send_message("st", "go")
        await app.wait(run_id, timeout=10)
        worker.stop()
        await task
        assert (await app.store.get_session("st", None)).status is SessionStatus.IDLE


async def test_agent_conversation_continues_from_the_session(database_url):
    model = ScriptedModel(["Hello Ann!", "Your name is Ann."])
    bot = Agent("bot", "Be brief.", model="default")
    async with make_app(database_url, [bot], models={"default": model}) as app:
        first = await app.run("bot", {"message": "I am Ann"}, session_id="chat")
        second = await app.run("bot", {"message": "What is my name?"}, session_id="chat")
        assert first.output["answer"] == "Hello Ann!" and second.output["answer"] == "Your name is Ann."
        sent = [m.content for m in model.requests[-1].messages]
        assert sent == ["Be brief.", "I am Ann", "Hello Ann!", "What is my name?"]
        values = (await app.store.get_session("chat", None)).values
        assert [m["content"] for m in values["messages"]] == [*sent[1:], "Your name is Ann."]


def test_context_is_trimmed_oldest_turns_first():
    from corral.agent import fit_context
    from corral.models import Message

    system = [Message.system("sys")]
    past = []
    for i in range(50):
        past += [Message.user(f"question {i} " + "x" * 200), Message.assistant(f"answer {i} " + "y" * 200)]
    current = [Message.user("the last turn")]
    window = fit_context(system, past, current, budget=1_000)
    assert window[0].content == "sys" and window[-1].content == "the last turn"
    kept = [m.content.split()[1] for m in window[1:-1]]
    assert kept and kept == sorted(kept, key=int) and kept[-1] == "49"  # the newest turns survive
    assert sum(len(m.content) for m in window) < 4_400


async def test_memory_items(database_url):
    async with make_app(database_url, [echo]) as app:
        store, now = app.store, time.time()
        await store.put_item("acme", ("users", "ann", "prefs"), "theme", {"color": "green", "size": 3}, now)
        await store.put_item("acme", ("users", "ann", "prefs"), "lang", {"code": "fr"}, now + 1)
        await store.put_item("acme", ("users", "bob"), "theme", {"color": "red"}, now + 2)
        await store.put_item("acme", ("usersX",), "k", {"v": 1}, now + 3)
        await store.put_item("other", ("users", "ann", "prefs"), "theme", {"color": "black"}, now)
        item = await store.get_item("acme", ("users", "ann", "prefs"), "theme")
        assert item.value == {"color": "green", "size": 3} and item.namespace == ("users", "ann", "prefs")
        under = await store.search_items("acme", ("users",), limit=10)
        assert {(i.namespace, i.key) for i in under} == {
            (("users", "ann", "prefs"), "theme"),
            (("users", "ann", "prefs"), "lang"),
            (("users", "bob"), "theme"),
        }
        assert [i.key for i in await store.search_items("acme", ("users",), filter={"color": "red"})] == ["theme"]
        assert [i.value for i in await store.search_items("acme", (), query="GREEN")] == [{"color": "green", "size": 3}]
        assert len(await store.search_items("acme", ("users",), limit=2, offset=2)) == 1
        assert await store.list_namespaces("acme", prefix=("users",), max_depth=2) == [
            ("users", "ann"),
            ("users", "bob"),
        ]
        assert await store.list_namespaces("acme", suffix=("prefs",)) == [("users", "ann", "prefs")]
        await store.put_item("acme", ("users", "bob"), "theme", {"color": "blue"}, now + 5)
        assert (await store.get_item("acme", ("users", "bob"), "theme")).value == {"color": "blue"}
        await store.delete_item("acme", ("users", "bob"), "theme")
        assert await store.get_item("acme", ("users", "bob"), "theme") is None
        assert (await store.get_item("other", ("users", "ann", "prefs"), "theme")).value == {"color": "black"}


async def test_api_keys_are_found_by_hash_only(database_url):
    async with make_app(database_url, [echo]) as app:
        key = await app.store.create_api_key("k1", "hash-abc", "acme", "ann", ("support", "admin"), time.time())
        assert key.roles == ("support", "admin")
        found = await app.store.find_api_key("hash-abc")
        assert found is not None and (found.tenant, found.principal, found.roles) == (
            "acme",
            "ann",
            ("support", "admin"),
        )
        assert await app.store.find_api_key("hash-xyz") is None
