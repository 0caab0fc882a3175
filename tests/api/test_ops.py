"""Operational endpoints: liveness, readiness, info, Prometheus metrics, the scaling signal, OpenAPI."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import httpx
from api_server import serve
from langgraph_sdk import get_client

from corral import SimModel
from corral.models.llamacpp import LlamaCppModel


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


@dataclass
class GatedLoad(SimModel):
    """The simulator, whose weights take until the test opens the gate to load: the real embedded
    model loads in well under a second, too fast to see a probe during it."""

    gate: threading.Event = field(default_factory=threading.Event)

    async def load(self) -> None:
        await asyncio.to_thread(self.gate.wait, 30)


def _ready_after(url: str, check, timeout: float = 15) -> httpx.Response:
    """GET /ready until `check(response)` holds."""
    deadline = time.monotonic() + timeout
    while not check(r := httpx.get(f"{url}/ready", timeout=5)):
        assert time.monotonic() < deadline, (r.status_code, r.text)
        time.sleep(0.05)
    return r


def test_ready_waits_until_the_models_are_loaded(tmp_path):
    model = GatedLoad()
    for server in serve(f"sqlite:///{tmp_path / 'a.db'}", models={"default": model}):
        r = httpx.get(f"{server.url}/ready")
        assert (r.status_code, r.json()) == (503, {"ok": False, "detail": "models are loading"})
        model.gate.set()
        assert _ready_after(server.url, lambda r: r.status_code == 200).json() == {"ok": True}


def test_ready_reports_models_that_failed_to_load(tmp_path):
    missing = tmp_path / "missing.gguf"
    for server in serve(f"sqlite:///{tmp_path / 'a.db'}", models={"default": LlamaCppModel(missing)}):
        r = _ready_after(server.url, lambda r: "models failed to load" in r.json().get("detail", ""))
        assert r.status_code == 503 and f"no model file at {missing}" in r.json()["detail"]
    for server in serve(f"sqlite:///{tmp_path / 'b.db'}", worker=False, models={"default": LlamaCppModel(missing)}):
        assert httpx.get(f"{server.url}/ready").json() == {"ok": True}  # no worker here: it runs no model
