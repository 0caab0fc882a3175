"""Human in the loop (a run parked in ctx.wait_for_message, resumed with command.resume) and
every multitask strategy, through the unmodified langgraph-sdk client."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError

from corral.config import Settings
from corral.store import open_store


@pytest.fixture
async def client(server):
    async with get_client(url=server.url, api_key=server.keys["a"]) as c:
        yield c


async def _status(client, tid, rid, want, timeout=30.0):
    for _ in range(int(timeout / 0.05)):
        run = await client.runs.get(tid, rid)
        if run["status"] == want:
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {rid} stayed {run['status']}, wanted {want}")


async def test_interrupt_then_resume_by_stream_and_wait(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    ask = {"messages": [{"role": "user", "content": "may I?"}]}
    parts = [p async for p in client.runs.stream(tid, "hitl", input=ask, stream_mode=["values", "custom", "updates"])]
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[-1] == "end" and "custom" in events
    interrupted = parts[-2].data
    assert parts[-2].event == "values" and interrupted["__interrupt__"][0]["value"]["waiting_for"] == "message"
    assert [m["content"] for m in interrupted["messages"]] == ["may I?"]
    run_id = parts[0].data["run_id"]
    assert parts[-1].data == {"run_id": run_id, "status": "interrupted"}
    assert (await client.runs.get(tid, run_id))["status"] == "interrupted"
    state = await client.threads.get_state(tid)
    assert state["next"] == ["hitl"] and state["interrupts"][0]["id"] == interrupted["__interrupt__"][0]["id"]
    assert state["tasks"][0]["interrupts"] == state["interrupts"]
    thread = await client.threads.get(tid)
    assert thread["status"] == "interrupted" and next(iter(thread["interrupts"].values())) == state["interrupts"]
    # a joined stream of the parked run ends the same way
    joined = [p async for p in client.runs.join_stream(tid, run_id)]
    assert joined[-1].data["status"] == "interrupted"
    assert (await client.runs.join(tid, run_id))["__interrupt__"]
    # a new run on an interrupted thread is refused (default strategy reject): resume it instead
    with pytest.raises(ConflictError):
        await client.runs.create(tid, "chat", input={"messages": [{"role": "user", "content": "hi"}]})

    resumed = [p async for p in client.runs.stream(tid, "hitl", command={"resume": "yes"}, stream_mode="values")]
    assert resumed[0].event == "metadata" and resumed[0].data["run_id"] == run_id  # the parked run continues
    assert resumed[-1].event == "end" and resumed[-1].data["status"] == "success"
    assert int(resumed[0].id) > int(parts[-1].id)  # ids keep increasing across the interrupt
    final = resumed[-2].data["messages"]
    assert [m["content"] for m in final] == ["may I?", "the human said yes"]
    assert (await client.threads.get(tid))["status"] == "idle"
    assert [r["run_id"] for r in await client.runs.list(tid)] == [run_id]

    # once more, resumed through runs.wait
    await client.runs.create(tid, "hitl", input={"messages": [{"role": "user", "content": "again?"}]})
    await _wait_thread(client, tid, "interrupted")
    values = await client.runs.wait(tid, "hitl", command={"resume": "no"})
    assert values["messages"][-1]["content"] == "the human said no"
    with pytest.raises(httpx.HTTPStatusError) as refused:  # nothing is waiting now (wait raises httpx's error)
        await client.runs.wait(tid, "hitl", command={"resume": "late"})
    assert refused.value.response.status_code == 409


async def _wait_thread(client, tid, status):
    for _ in range(200):
        if (await client.threads.get(tid))["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"thread never became {status}")


async def test_multitask_reject_and_enqueue(client, server):
    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.create(tid, "slow", input={"steps": 30, "delay": 0.05})  # still active at the next call
    with pytest.raises(ConflictError):
        await client.runs.create(tid, "slow", input={"steps": 1}, multitask_strategy="reject")
    second = await client.runs.create(tid, "slow", input={"steps": 1, "delay": 0.01}, multitask_strategy="enqueue")
    assert second["multitask_strategy"] == "enqueue"
    await client.runs.join(tid, second["run_id"])
    async with open_store(Settings(database_url=server.database_url)) as store:
        a, b = await store.get_run(first["run_id"]), await store.get_run(second["run_id"])
    assert a.status.value == b.status.value == "succeeded"
    assert a.finished_at <= b.started_at  # one at a time, in order


async def test_multitask_interrupt_keeps_the_cancelled_run(client, server):
    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.create(tid, "slow", input={"steps": 100, "delay": 0.05})
    await _status(client, tid, first["run_id"], "running")
    await asyncio.sleep(0.3)  # a few steps are journaled
    second = await client.runs.create(tid, "slow", input={"steps": 1}, multitask_strategy="interrupt")
    await client.runs.join(tid, second["run_id"])
    assert (await client.runs.get(tid, first["run_id"]))["metadata"]["corral_status"] == "cancelled"
    assert (await client.runs.get(tid, second["run_id"]))["status"] == "success"
    async with open_store(Settings(database_url=server.database_url)) as store:
        assert await store.list_steps(first["run_id"])  # its journal is kept


async def test_multitask_rollback_deletes_the_active_run_and_its_input(client):
    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.create(
        tid, "slow", input={"steps": 100, "delay": 0.05, "messages": [{"role": "user", "content": "forget me"}]}
    )
    await _status(client, tid, first["run_id"], "running")
    keep = {"steps": 1, "messages": [{"role": "user", "content": "keep me"}]}
    values = await client.runs.wait(tid, "slow", input=keep, multitask_strategy="rollback")
    assert [m["content"] for m in values["messages"]] == ["keep me", "took 1 steps"]
    with pytest.raises(NotFoundError):
        await client.runs.get(tid, first["run_id"])
    assert len(await client.runs.list(tid)) == 1
