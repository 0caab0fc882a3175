"""Operations: liveness, readiness, server info, Prometheus metrics and the autoscaling signal.
None of these needs a key: probes and scrapers do not carry one, and nothing here is a tenant's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ... import __version__
from ...errors import StoreError
from ..deps import State

router = APIRouter(tags=["ops"])


@router.get("/ok")
async def ok() -> dict[str, bool]:
    """Liveness: the process answers."""
    return {"ok": True}


@router.get("/ready", response_model=None)
async def ready(state: State) -> dict[str, Any] | JSONResponse:
    """Readiness: the store answers within 2 seconds and, where this process runs a worker, its
    models are loaded (the embedded model's weights are in memory)."""
    loading = state.models_loading
    if loading is not None and not loading.done():
        return _unready("models are loading")
    if loading is not None and not loading.cancelled() and (exc := loading.exception()) is not None:
        return _unready(f"models failed to load: {exc}")
    try:
        async with asyncio.timeout(2.0):
            await state.app.store.stats(time.time())
    except (StoreError, TimeoutError) as exc:
        return _unready(f"store unreachable: {exc}")
    return {"ok": True}


def _unready(detail: str) -> JSONResponse:
    return JSONResponse({"ok": False, "detail": detail}, status_code=503)


@router.get("/info")
async def info(state: State) -> dict[str, Any]:
    return {
        "version": __version__,
        "server": "corral",
        "flags": {"assistants": True, "crons": False, "langsmith": False, "store": True, "strict_resume": True},
        "corral": {
            "agents": state.app.agent_names(),
            "worker": state.worker is not None,
            "auth": state.auth,
            "sse_heartbeat_seconds": state.heartbeat,
        },
    }


@router.get("/metrics")
async def metrics(state: State) -> Response:
    stats = await state.app.store.stats(time.time())
    return Response(state.metrics.render(stats), media_type=state.metrics.content_type)


@router.get("/corral/scaling")
async def scaling(state: State) -> dict[str, float]:
    """The autoscaler's signal (KEDA metrics-api, HPA external metric): the backlog, and the work
    in flight (queued + running + parked runs now due) so that busy workers are not scaled away
    and a fleet scaled to zero still wakes for a timer or a message."""
    stats = await state.app.store.stats(time.time())
    queued, running, due = stats.get("queued", 0.0), stats.get("running", 0.0), stats.get("due", 0.0)
    return {
        "queued": queued,
        "running": running,
        "waiting": stats.get("waiting", 0.0),
        "due": due,
        "oldest_queued_age_seconds": stats.get("oldest_queued_age_seconds", 0.0),
        "in_flight": queued + running + due,
    }
