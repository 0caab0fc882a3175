"""Keys, tenants and bad input: 401 without a key, 404 for another tenant's ids on every route,
413 for bodies over the limit, 422 naming the field, 429 with Retry-After when queues are full."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from api_server import serve
from langgraph_sdk import get_client
from langgraph_sdk.errors import AuthenticationError

HELLO = {"messages": [{"role": "user", "content": "hello"}]}


def _http(server, key: str | None) -> httpx.AsyncClient:
    headers = {"x-api-key": key} if key else {}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30)


async def test_a_key_is_required(server):
    async with _http(server, None) as anon, _http(server, "crl_not-a-key") as wrong:
        for client in (anon, wrong):
            for method, path in [
                ("POST", "/assistants/search"),
                ("POST", "/threads"),
                ("POST", "/threads/search"),
                ("GET", "/threads/x"),
                ("POST", "/runs/wait"),
                ("POST", "/store/items/search"),
            ]:
                r = await client.request(method, path, json={})
                assert r.status_code == 401, (method, path, r.text)
        assert (await anon.get("/ok")).json() == {"ok": True}
    async with get_client(url=server.url, api_key="crl_wrong") as sdk:
        with pytest.raises(AuthenticationError):
            await sdk.threads.create()


async def test_another_tenants_ids_answer_404_everywhere(server):
    async with get_client(url=server.url, api_key=server.keys["a"]) as alice:
        tid = (await alice.threads.create(metadata={"owner": "a"}))["thread_id"]
        await alice.runs.wait(tid, "chat", input=HELLO)
        rid = (await alice.runs.list(tid))[0]["run_id"]
        checkpoint = (await alice.threads.get_state(tid))["checkpoint"]["checkpoint_id"]
        await alice.store.put_item(["notes"], "secret", {"text": "a's"})
        hitl = (await alice.threads.create())["thread_id"]
        await alice.runs.create(hitl, "hitl", input={})

    run_body = {"assistant_id": "chat", "input": HELLO}
    routes = [
        ("GET", f"/threads/{tid}", None),
        ("PATCH", f"/threads/{tid}", {"metadata": {"x": 1}}),
        ("DELETE", f"/threads/{tid}", None),
        ("GET", f"/threads/{tid}/state", None),
        ("GET", f"/threads/{tid}/state/{checkpoint}", None),
        ("POST", f"/threads/{tid}/state", {"values": {"x": 1}}),
        ("GET", f"/threads/{tid}/history", None),
        ("POST", f"/threads/{tid}/history", {}),
        ("POST", f"/threads/{tid}/runs", run_body),
        ("POST", f"/threads/{tid}/runs/stream", run_body),
        ("POST", f"/threads/{tid}/runs/wait", run_body),
        ("POST", f"/threads/{hitl}/runs/wait", {"assistant_id": "hitl", "command": {"resume": "x"}}),
        ("GET", f"/threads/{tid}/runs", None),
        ("GET", f"/threads/{tid}/runs/{rid}", None),
        ("DELETE", f"/threads/{tid}/runs/{rid}", None),
        ("GET", f"/threads/{tid}/runs/{rid}/join", None),
        ("GET", f"/threads/{tid}/runs/{rid}/stream", None),
        ("POST", f"/threads/{tid}/runs/{rid}/cancel", None),
        ("GET", "/store/items?namespace=notes&key=secret", None),
    ]
    async with _http(server, server.keys["b"]) as bob:
        own = (await bob.post("/threads", json={})).json()["thread_id"]
        routes += [  # a's run under b's own thread
            ("GET", f"/threads/{own}/runs/{rid}", None),
            ("GET", f"/threads/{own}/runs/{rid}/join", None),
            ("GET", f"/threads/{own}/runs/{rid}/stream", None),
            ("POST", f"/threads/{own}/runs/{rid}/cancel", None),
            ("DELETE", f"/threads/{own}/runs/{rid}", None),
        ]
        for method, path, body in routes:
            r = await bob.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert [t["thread_id"] for t in (await bob.post("/threads/search", json={})).json()] == [own]
        assert (await bob.post("/store/items/search", json={"namespace_prefix": ["notes"]})).json() == {"items": []}
        assert (await bob.post("/store/namespaces", json={})).json() == {"namespaces": []}
        r = await bob.request("DELETE", "/store/items", json={"namespace": ["notes"], "key": "secret"})
        assert r.status_code == 204
    async with get_client(url=server.url, api_key=server.keys["a"]) as alice:  # nothing of a's changed
        thread = await alice.threads.get(tid)
        assert thread["metadata"] == {"owner": "a"} and len(thread["values"]["messages"]) == 2
        assert (await alice.runs.get(tid, rid))["status"] == "success"
        assert (await alice.store.get_item(["notes"], "secret"))["value"] == {"text": "a's"}
        assert (await alice.threads.get(hitl))["status"] == "interrupted"


async def test_principal_and_roles_reach_tools(server):
    async with get_client(url=server.url, api_key=server.keys["a"]) as alice:
        out = await alice.runs.wait(None, "who", input={})
    assert (out["tenant"], out["principal"], out["roles"]) == ("tenant-a", "alice", ["support"])
    assert out["tool"] == "support tool says hi"
    async with get_client(url=server.url, api_key=server.keys["b"]) as bob:
        out = await bob.runs.wait(None, "who", input={})
    assert (out["tenant"], out["principal"], out["roles"], out["tool"]) == ("tenant-b", "bob", [], "ToolNotAllowed")


@pytest.fixture
def small(tmp_path: Path):
    yield from serve(
        f"sqlite:///{tmp_path / 'small.db'}",
        worker=False,  # runs stay queued
        max_body_bytes=4096,
        max_input_bytes=2048,
        max_queued_per_tenant=2,
        max_queued_total=3,
    )


async def test_bodies_over_the_limit_answer_413(small):
    async with _http(small, small.keys["a"]) as http:
        r = await http.post("/threads", json={"metadata": {"pad": "x" * 5000}})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]

        async def chunks():
            for _ in range(10):
                yield b" " * 1000
            yield b"{}"

        r = await http.post("/threads", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        big = {"assistant_id": "chat", "input": {"messages": [{"role": "user", "content": "y" * 3000}]}}
        r = await http.post(f"/threads/{tid}/runs", json=big)
        assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
        assert (await http.get(f"/threads/{tid}/runs")).json() == []  # nothing half-written


async def test_invalid_input_answers_422_naming_the_field(small):
    async with _http(small, small.keys["a"]) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        r = await http.post(f"/threads/{tid}/runs", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        cases = [
            ({"assistant_id": "chat", "stream_mode": "bogus"}, "stream_mode"),
            ({"assistant_id": "chat", "stream_mode": "debug"}, "stream_mode"),
            ({"assistant_id": "chat", "input": {"messages": [{"type": "alien"}]}}, "input.messages.0.type"),
            ({"assistant_id": "chat", "interrupt_before": ["node"]}, "interrupt_before"),
            ({"assistant_id": "chat", "multitask_strategy": "sometimes"}, "multitask_strategy"),
            ({"input": HELLO}, "assistant_id"),
            ({"assistant_id": "chat", "command": {"goto": "x"}}, "command"),
        ]
        for body, field in cases:
            r = await http.post(f"/threads/{tid}/runs", json=body)
            assert r.status_code == 422, (body, r.text)
            assert field in r.json()["field"], (body, r.json())
        r = await http.post("/store/namespaces", json={"limit": 0})
        assert r.status_code == 422 and r.json()["field"] == "limit"
        r = await http.put("/store/items", json={"namespace": ["a.b"], "key": "k", "value": {}})
        assert r.status_code == 422 and r.json()["field"].startswith("namespace")
        # NUL characters name nothing (and PostgreSQL cannot store them): 422, not a store failure
        r = await http.put("/store/items", json={"namespace": ["n"], "key": "a\x00b", "value": {}})
        assert r.status_code == 422 and "NUL" in r.json()["message"]
        r = await http.post("/threads", json={"metadata": {"k": ["ok", "x\x00"]}})
        assert r.status_code == 422 and "metadata.k.1" in r.json()["message"]
        r = await http.get("/threads/a%00b")
        assert r.status_code == 422 and r.json()["field"] == "path.thread_id"
        # a refused run on a thread it would have created leaves no thread behind
        bad = {"assistant_id": "chat", "if_not_exists": "create", "stream_mode": "bogus"}
        assert (await http.post("/threads/new-thread/runs", json=bad)).status_code == 422
        assert (await http.get("/threads/new-thread")).status_code == 404
        assert (await http.get(f"/threads/{tid}/runs")).json() == []


async def test_full_queues_answer_429_with_retry_after(small):
    async with _http(small, small.keys["a"]) as a, _http(small, small.keys["b"]) as b:
        body = {"assistant_id": "slow", "input": {"steps": 1}}
        for _ in range(2):
            assert (await a.post("/runs", json=body)).status_code == 200
        r = await a.post("/runs", json=body)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "max_queued_per_tenant" in r.json()["detail"]
        assert (await b.post("/runs", json=body)).status_code == 200  # another tenant still may
        r = await b.post("/runs", json=body)  # but now 3 are queued in all
        assert r.status_code == 429 and "max_queued_total" in r.json()["detail"]
        scaling = (await a.get("/corral/scaling")).json()
        assert scaling["queued"] == 3 and scaling["in_flight"] == 3
        metrics = (await a.get("/metrics")).text
        assert 'corral_admission_rejected_total{cap="tenant"} 1.0' in metrics
        assert 'corral_admission_rejected_total{cap="total"} 1.0' in metrics
        # a refused run on a thread it would have created leaves no thread behind
        r = await a.post("/threads/fresh/runs", json={**body, "if_not_exists": "create"})
        assert r.status_code == 429
        assert (await a.get("/threads/fresh")).status_code == 404
        assert (await a.get("/corral/scaling")).json()["queued"] == 3
