"""Operational endpoints: liveness, readiness, info, Prometheus metrics, the scaling signal, OpenAPI."""

from __future__ import annotations

import httpx
from langgraph_sdk import get_client


async def test_health_info_scaling_and_openapi(server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/ok")).json() == {"ok": True}
        assert (await http.get("/ready")).json() == {"ok": True}
        info = (await http.get("/info")).json()
        assert info["flags"]["assistants"] is True and info["corral"]["worker"] is True
        scaling = (await http.get("/corral/scaling")).json()
        assert set(scaling) == {"queued", "running", "waiting", "due", "oldest_queued_age_seconds", "in_flight"}
        doc = (await http.get("/openapi.json")).json()
        assert "/threads/{thread_id}/runs/stream" in doc["paths"] and "/store/items" in doc["paths"]
        assert (await http.get("/docs")).status_code == 200


async def test_metrics_after_a_streamed_run(server):
    async with get_client(url=server.url, api_key=server.keys["a"]) as client:
        parts = [p async for p in client.runs.stream(None, "slow", input={"steps": 2, "delay": 0.01})]
    assert parts[-1].event == "end"
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        'corral_runs{status="queued"}',
        "corral_queue_depth",
        "corral_queue_oldest_age_seconds",
        "corral_worker_active_runs",
        "corral_sse_clients 0.0",
        'corral_step_duration_seconds_bucket{kind="step",le=',
        'corral_runs_finished_total{status="succeeded"} 1.0',
    ):
        assert name in text, name
    streamed = next(line for line in text.splitlines() if line.startswith("corral_sse_events_total "))
    assert float(streamed.split()[1]) == len(parts)
