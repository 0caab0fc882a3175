"""Streams over real HTTP: joining mid-way with Last-Event-ID, heartbeats, disconnects, cancel."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError

SLOW = {"steps": 8, "delay": 0.1}


@pytest.fixture
async def client(server):
    async with get_client(url=server.url, api_key=server.keys["a"]) as c:
        yield c


async def _status(client, tid, rid, want, timeout=30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = await client.runs.get(tid, rid)
        if run["status"] == want:
            return run
        assert asyncio.get_running_loop().time() < deadline, f"run stayed {run['status']}, wanted {want}"
        await asyncio.sleep(0.05)


async def test_join_stream_midway_with_last_event_id(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "slow", input=SLOW, stream_mode=["values", "custom", "updates"])
    first = []
    async with contextlib.aclosing(client.runs.join_stream(tid, run["run_id"])) as stream:
        async for part in stream:
            first.append(part)
            if sum(p.event == "custom" for p in first) == 3:
                break
    rest = [p async for p in client.runs.join_stream(tid, run["run_id"], last_event_id=first[-1].id)]
    whole = [p async for p in client.runs.join_stream(tid, run["run_id"])]
    assert [(p.id, p.event, p.data) for p in first + rest] == [(p.id, p.event, p.data) for p in whole]
    assert whole[0].event == "metadata" and whole[-1].event == "end"
    assert [p.data["data"]["i"] for p in whole if p.event == "custom"] == list(range(8))
    # the run's own stream modes are used when the join does not name any
    assert {p.event for p in whole} == {"metadata", "values", "custom", "updates", "end"}
    only_custom = [p async for p in client.runs.join_stream(tid, run["run_id"], stream_mode="custom")]
    assert {p.event for p in only_custom} == {"metadata", "custom", "end"}


async def test_sse_wire_format_headers_and_heartbeats(server):
    async with get_client(url=server.url, api_key=server.keys["a"]) as client:
        thread = await client.threads.create()
    body = {"assistant_id": "slow", "input": {"steps": 2, "delay": 1.2}, "stream_mode": ["values"]}
    headers = {"x-api-key": server.keys["a"], "Accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        http.stream("POST", f"/threads/{thread['thread_id']}/runs/stream", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        location = r.headers["content-location"]
        assert location.startswith(f"/threads/{thread['thread_id']}/runs/")
        assert r.headers["location"] == f"{location}/stream"
        text = "".join([chunk async for chunk in r.aiter_text()])
    blocks = [b for b in text.split("\n\n") if b]
    assert ": heartbeat" in blocks  # heartbeat is 0.5 s in tests; a step takes 1.2 s
    events = [b for b in blocks if not b.startswith(":")]
    for block in events:
        lines = block.split("\n")
        assert [line.split(":", 1)[0] for line in lines] == ["id", "event", "data"]
    ids = [int(b.split("\n")[0][4:]) for b in events]
    assert ids == sorted(set(ids))
    assert events[-1].split("\n")[1] == "event: end"


async def test_disconnect_does_not_cancel_unless_asked(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    created = []
    async with contextlib.aclosing(
        client.runs.stream(tid, "slow", input={"steps": 4, "delay": 0.1}, on_run_created=created.append)
    ) as stream:
        async for part in stream:
            if part.event == "values":
                break
    await _status(client, tid, created[0]["run_id"], "success")

    created.clear()
    async with contextlib.aclosing(
        client.runs.stream(
            # 20 s of work: under heavy load a cancel once arrived after a 5 s run had finished
            # (cause not pinned down; see the closing note of issue 5), so leave room for it.
            tid,
            "slow",
            input={"steps": 200, "delay": 0.1},
            on_disconnect="cancel",
            on_run_created=created.append,
        )
    ) as stream:
        async for part in stream:
            if part.event == "values":
                break
    run = await _status(client, tid, created[0]["run_id"], "interrupted")
    assert run["metadata"]["corral_status"] == "cancelled"


async def test_cancel_and_rollback(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "slow", input={"steps": 100, "delay": 0.05})
    await _status(client, tid, run["run_id"], "running")
    await client.runs.cancel(tid, run["run_id"], wait=True)
    done = await client.runs.get(tid, run["run_id"])
    assert done["status"] == "interrupted" and done["metadata"]["corral_status"] == "cancelled"
    parts = [p async for p in client.runs.join_stream(tid, run["run_id"])]
    assert parts[-1].event == "end" and parts[-1].data["status"] == "interrupted"
    assert "error" not in [p.event for p in parts]

    second = await client.runs.create(tid, "slow", input={"steps": 100, "delay": 0.05})
    await _status(client, tid, second["run_id"], "running")
    await client.runs.cancel(tid, second["run_id"], action="rollback")
    with pytest.raises(NotFoundError):
        await client.runs.get(tid, second["run_id"])
    assert [r["run_id"] for r in await client.runs.list(tid)] == [run["run_id"]]
