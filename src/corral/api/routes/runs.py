"""Runs: background, streamed and waited-for, on a thread or stateless; join, cancel, delete."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response

from ...store.base import RunRecord
from ..auth import Caller
from ..convert import run_json
from ..deps import Auth, State
from ..errors import NotFound
from ..schemas import RunCreate
from ..service import Started, rollback, run_filter_status, start_run
from ..sse import BodyWriter, StreamResponse, json_with_heartbeats, run_events, stream_headers
from ..state import ApiState
from ..streams import Mapper, final_result, is_parked, resume_point, stream_modes, waiting_step

router = APIRouter(tags=["runs"])
_SSE = "text/event-stream; charset=utf-8"


async def _run_json(state: ApiState, run: RunRecord) -> dict[str, Any]:
    # A run woken by a message (due, not yet claimed) is about to continue: it shows as running.
    parked = is_parked(run) and await waiting_step(state.app, run) is not None
    return run_json(run, waiting_for_message=parked)


async def _get(state: ApiState, caller: Caller, thread_id: str, run_id: str) -> RunRecord:
    run = await state.app.get_run(run_id, tenant=caller.tenant)
    if run.session_id != thread_id:
        raise NotFound(f"no run {run_id!r} in thread {thread_id!r}")
    return run


def _closer(state: ApiState, caller: Caller, run_id: str, cancel: bool, gauge: bool) -> Any:
    state.attach(run_id)
    if gauge:
        state.metrics.sse_clients.inc()

    async def on_close(disconnected: bool) -> None:
        state.detach(run_id)
        if gauge:
            state.metrics.sse_clients.dec()
        if disconnected and cancel:  # only when the client asked for it (on_disconnect="cancel")
            await state.app.cancel(run_id, tenant=caller.tenant)

    return on_close


def _stream(state: ApiState, caller: Caller, started: Started, cancel: bool, skip_to: int = 0) -> StreamResponse:
    run = started.run
    mapper = Mapper(state, run, started.modes, caller.tenant)
    writer = BodyWriter()
    chunks = run_events(state, mapper, after=started.after, skip_to=skip_to, prelude=started.resumed, writer=writer)
    return StreamResponse(
        chunks,
        media_type=_SSE,
        headers=stream_headers(run.session_id, run.id),
        on_close=_closer(state, caller, run.id, cancel, gauge=True),
        writer=writer,
    )


def _wait(state: ApiState, caller: Caller, run: RunRecord, after: int, cancel: bool) -> StreamResponse:
    base = f"/threads/{run.session_id}/runs/{run.id}"
    return StreamResponse(
        json_with_heartbeats(state, final_result(state, run.id, caller.tenant, after)),
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Content-Location": base, "Location": f"{base}/join"},
        on_close=_closer(state, caller, run.id, cancel, gauge=False),
    )


# on a thread -----------------------------------------------------------------------------------
@router.post("/threads/{thread_id}/runs")
async def create_run(thread_id: str, body: RunCreate, state: State, caller: Auth, response: Response) -> dict[str, Any]:
    started = await start_run(state, caller, thread_id, body)
    response.headers["Content-Location"] = f"/threads/{thread_id}/runs/{started.run.id}"
    return await _run_json(state, started.run)


@router.post("/threads/{thread_id}/runs/stream", response_model=None)
async def stream_run(thread_id: str, body: RunCreate, state: State, caller: Auth) -> StreamResponse:
    started = await start_run(state, caller, thread_id, body)
    return _stream(state, caller, started, cancel=body.on_disconnect == "cancel")


@router.post("/threads/{thread_id}/runs/wait", response_model=None)
async def wait_run(thread_id: str, body: RunCreate, state: State, caller: Auth) -> StreamResponse:
    started = await start_run(state, caller, thread_id, body)
    return _wait(state, caller, started.run, started.after, cancel=body.on_disconnect == "cancel")


@router.get("/threads/{thread_id}/runs")
async def list_runs(
    thread_id: str,
    state: State,
    caller: Auth,
    limit: int = Query(10, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=100_000),
    status: str | None = None,
) -> list[dict[str, Any]]:
    await state.store.get_session(thread_id, caller.tenant)
    wanted = run_filter_status(status)
    runs: list[RunRecord] = []
    for corral_status in wanted or (None,):
        runs += await state.app.store.list_runs(
            session_id=thread_id, status=corral_status, tenant=caller.tenant, limit=offset + limit
        )
    runs.sort(key=lambda r: r.created_at, reverse=True)
    out = [await _run_json(state, r) for r in runs]
    if status is not None:
        out = [r for r in out if r["status"] == status]
    return out[offset : offset + limit]


@router.get("/threads/{thread_id}/runs/{run_id}")
async def get_run(thread_id: str, run_id: str, state: State, caller: Auth) -> dict[str, Any]:
    return await _run_json(state, await _get(state, caller, thread_id, run_id))


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204)
async def delete_run(thread_id: str, run_id: str, state: State, caller: Auth) -> Response:
    await _get(state, caller, thread_id, run_id)
    await state.store.delete_run(run_id, caller.tenant)
    return Response(status_code=204)


@router.get("/threads/{thread_id}/runs/{run_id}/join", response_model=None)
async def join_run(thread_id: str, run_id: str, state: State, caller: Auth) -> StreamResponse:
    run = await _get(state, caller, thread_id, run_id)
    return _wait(state, caller, run, 0, cancel=False)


@router.get("/threads/{thread_id}/runs/{run_id}/stream", response_model=None)
async def join_stream(
    thread_id: str,
    run_id: str,
    state: State,
    caller: Auth,
    stream_mode: Annotated[list[str] | None, Query()] = None,
    cancel_on_disconnect: bool = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamResponse:
    run = await _get(state, caller, thread_id, run_id)
    stored = (run.metadata.get("corral_api") or {}).get("stream_mode") or ["values"]
    modes = stream_modes(stream_mode, default=stored)
    after, skip_to = resume_point(last_event_id)
    return _stream(state, caller, Started(run, modes, after=after), cancel_on_disconnect, skip_to=skip_to)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", response_model=None)
async def cancel_run(
    thread_id: str,
    run_id: str,
    state: State,
    caller: Auth,
    wait: bool = False,
    action: Literal["interrupt", "rollback"] = "interrupt",
) -> Any:
    run = await _get(state, caller, thread_id, run_id)
    if action == "rollback":
        await rollback(state, run, caller.tenant)
        return Response(status_code=204)
    run = await state.app.cancel(run_id, tenant=caller.tenant)
    if wait:
        await state.app.wait(run_id)
        run = await state.app.get_run(run_id, tenant=caller.tenant)
    return await _run_json(state, run)


# stateless -------------------------------------------------------------------------------------
@router.post("/runs")
async def create_stateless_run(body: RunCreate, state: State, caller: Auth, response: Response) -> dict[str, Any]:
    started = await start_run(state, caller, None, body)
    response.headers["Content-Location"] = f"/threads/{started.run.session_id}/runs/{started.run.id}"
    return await _run_json(state, started.run)


@router.post("/runs/stream", response_model=None)
async def stream_stateless_run(body: RunCreate, state: State, caller: Auth) -> StreamResponse:
    started = await start_run(state, caller, None, body)
    return _stream(state, caller, started, cancel=body.on_disconnect == "cancel")


@router.post("/runs/wait", response_model=None)
async def wait_stateless_run(body: RunCreate, state: State, caller: Auth) -> StreamResponse:
    started = await start_run(state, caller, None, body)
    return _wait(state, caller, started.run, 0, cancel=body.on_disconnect == "cancel")
