"""Threads: Corral's sessions, with their values, state and history (checkpoints)."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Query, Response

from ...errors import Conflict
from ...store import values as reducer
from ...store.base import Checkpoint, SessionRecord, SessionStatus
from ..convert import (
    InvalidInput,
    checkpoint_ref,
    interrupt_json,
    state_json,
    thread_json,
    values_from_lc,
)
from ..deps import Auth, State
from ..errors import NotFound
from ..schemas import HistoryQuery, StateUpdate, ThreadCount, ThreadCreate, ThreadPatch, ThreadSearch
from ..service import active_runs, find_waiting

router = APIRouter(tags=["threads"])
_SCAN = 5_000  # threads read at most to filter or sort beyond what the store does itself


async def _interrupted(
    state: State, session: SessionRecord, tenant: str
) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
    """(values with the waiting run's input folded in, its interrupts, its agent) for an
    interrupted thread; the values as stored otherwise."""
    if session.status is not SessionStatus.INTERRUPTED:
        return session.values, [], None
    found = await find_waiting(state, session.id, tenant)
    if found is None:
        return session.values, [], None
    run, seq = found
    values = reducer.merge(session.values, reducer.input_update(run.input))
    return values, [interrupt_json(run.id, seq)], run.agent


async def _thread(state: State, session: SessionRecord, tenant: str) -> dict[str, Any]:
    values, interrupts, _ = await _interrupted(state, session, tenant)
    if not interrupts:
        return thread_json(session)
    return thread_json(replace(session, values=values), {interrupts[0]["id"]: interrupts})


def _select(item: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k in select} if select else item


@router.post("/threads")
async def create_thread(body: ThreadCreate, state: State, caller: Auth) -> dict[str, Any]:
    if body.ttl is not None:
        raise InvalidInput("ttl", "thread TTLs are not supported; delete threads explicitly")
    thread_id = body.thread_id or str(uuid.uuid4())
    updates = []
    for i, superstep in enumerate(body.supersteps or ()):
        for j, update in enumerate(superstep.get("updates") or ()):
            if update.get("command"):
                raise InvalidInput(f"supersteps.{i}.updates.{j}.command", "commands are not supported here")
            updates.append(values_from_lc(update.get("values") or {}, f"supersteps.{i}.updates.{j}.values"))
    session = await state.store.create_session(
        thread_id, caller.tenant, caller.principal, body.metadata or {}, time.time(), if_exists=body.if_exists
    )
    if updates:
        values = session.values
        for update in updates:
            values = reducer.merge(values, update)
        session = await state.store.update_session(thread_id, caller.tenant, time.time(), values=values)
    return await _thread(state, session, caller.tenant)


async def _search(
    state: State, caller: Auth, body: ThreadSearch | ThreadCount, limit: int, offset: int
) -> list[SessionRecord]:
    status = SessionStatus(body.status) if body.status else None
    ids = getattr(body, "ids", None)
    sort_by = getattr(body, "sort_by", None)
    sort_order = getattr(body, "sort_order", None)
    plain = (
        not ids and not body.values and (sort_by in (None, "updated_at", "state_updated_at")) and sort_order != "asc"
    )
    if plain:
        return await state.store.search_sessions(
            caller.tenant, metadata=body.metadata, status=status, limit=limit, offset=offset
        )
    found = await state.store.search_sessions(caller.tenant, metadata=body.metadata, status=status, limit=_SCAN)
    if ids:
        wanted = set(ids)
        found = [s for s in found if s.id in wanted]
    if body.values:
        found = [s for s in found if all(s.values.get(k) == v for k, v in body.values.items())]
    key = {"thread_id": "id", "status": "status", "created_at": "created_at"}.get(sort_by or "", "updated_at")
    found.sort(key=lambda s: str(getattr(s, key)) if key in ("id", "status") else getattr(s, key))
    if sort_order != "asc":
        found.reverse()
    return found[offset : offset + limit]


@router.post("/threads/search")
async def search_threads(body: ThreadSearch, state: State, caller: Auth) -> list[dict[str, Any]]:
    sessions = await _search(state, caller, body, body.limit, body.offset)
    return [_select(await _thread(state, s, caller.tenant), body.select) for s in sessions]


@router.post("/threads/count")
async def count_threads(body: ThreadCount, state: State, caller: Auth) -> int:
    return len(await _search(state, caller, body, _SCAN, 0))


@router.get("/threads/{thread_id}")
async def get_thread(thread_id: str, state: State, caller: Auth) -> dict[str, Any]:
    return await _thread(state, await state.store.get_session(thread_id, caller.tenant), caller.tenant)


@router.patch("/threads/{thread_id}")
async def patch_thread(thread_id: str, body: ThreadPatch, state: State, caller: Auth) -> dict[str, Any]:
    if body.ttl is not None:
        raise InvalidInput("ttl", "thread TTLs are not supported; delete threads explicitly")
    session = await state.store.update_session(thread_id, caller.tenant, time.time(), metadata=body.metadata)
    return await _thread(state, session, caller.tenant)


@router.delete("/threads/{thread_id}", status_code=204)
async def delete_thread(thread_id: str, state: State, caller: Auth) -> Response:
    await state.store.get_session(thread_id, caller.tenant)
    for run in await active_runs(state, thread_id, caller.tenant):
        await state.app.cancel(run.id, tenant=caller.tenant)  # in-flight calls stop now, not at a fenced write
    await state.store.delete_session(thread_id, caller.tenant)
    return Response(status_code=204)


# state and history ---------------------------------------------------------------------------
async def _state(
    state: State, caller: Auth, thread_id: str, checkpoints: list[Checkpoint], latest: bool
) -> dict[str, Any]:
    session = await state.store.get_session(thread_id, caller.tenant)
    checkpoint = checkpoints[0] if checkpoints else None
    parent = checkpoints[1] if len(checkpoints) > 1 else None
    if not latest and checkpoint is not None:
        return state_json(thread_id, checkpoint.values, checkpoint, parent)
    values, interrupts, waiting_agent = await _interrupted(state, session, caller.tenant)
    return state_json(thread_id, values, checkpoint, parent, interrupts, waiting_agent)


@router.get("/threads/{thread_id}/state")
async def get_state(thread_id: str, state: State, caller: Auth) -> dict[str, Any]:
    checkpoints = await state.store.list_checkpoints(thread_id, caller.tenant, limit=2)
    return await _state(state, caller, thread_id, checkpoints, latest=True)


def _checkpoint_number(value: Any, field: str) -> int:
    if isinstance(value, dict):
        value = (value.get("configurable") or value).get("checkpoint_id")
    try:
        return int(str(value))
    except ValueError:
        raise InvalidInput(field, f"not a checkpoint id of this server: {value!r}") from None


@router.get("/threads/{thread_id}/state/{checkpoint_id}")
async def get_state_at(thread_id: str, checkpoint_id: str, state: State, caller: Auth) -> dict[str, Any]:
    number = _checkpoint_number(checkpoint_id, "checkpoint_id")
    checkpoints = await state.store.list_checkpoints(thread_id, caller.tenant, limit=2, before=number + 1)
    if not checkpoints or checkpoints[0].id != number:
        raise NotFound(f"no checkpoint {checkpoint_id} in thread {thread_id}")
    latest = await state.store.list_checkpoints(thread_id, caller.tenant, limit=1)
    return await _state(state, caller, thread_id, checkpoints, latest=latest[0].id == number)


@router.post("/threads/{thread_id}/state")
async def update_state(thread_id: str, body: StateUpdate, state: State, caller: Auth) -> dict[str, Any]:
    session = await state.store.get_session(thread_id, caller.tenant)
    if session.status is SessionStatus.BUSY:
        raise Conflict(f"thread {thread_id} is busy: a run would overwrite this update; try when it is idle")
    if isinstance(body.values, list):
        raise InvalidInput("values", "send one object of values")
    requested = body.checkpoint_id or (body.checkpoint or {}).get("checkpoint_id")
    latest = await state.store.list_checkpoints(thread_id, caller.tenant, limit=1)
    if requested is not None and (not latest or _checkpoint_number(requested, "checkpoint_id") != latest[0].id):
        raise InvalidInput("checkpoint_id", "only the latest checkpoint can be updated (no forks)")
    if body.values is not None:
        update = values_from_lc(body.values, "values")
        await state.store.update_session(
            thread_id, caller.tenant, time.time(), values=reducer.merge(session.values, update)
        )
        latest = await state.store.list_checkpoints(thread_id, caller.tenant, limit=1)
    return {"checkpoint": checkpoint_ref(thread_id, latest[0].id if latest else None)}


async def _history(state: State, caller: Auth, thread_id: str, limit: int, before: Any) -> list[dict[str, Any]]:
    number = _checkpoint_number(before, "before") if before else None
    checkpoints = await state.store.list_checkpoints(thread_id, caller.tenant, limit=limit + 1, before=number)
    return [
        state_json(thread_id, cp.values, cp, checkpoints[i + 1] if i + 1 < len(checkpoints) else None)
        for i, cp in enumerate(checkpoints[:limit])
    ]


@router.get("/threads/{thread_id}/history")
async def get_history(
    thread_id: str, state: State, caller: Auth, limit: int = Query(10, ge=1, le=1000), before: str | None = None
) -> list[dict[str, Any]]:
    return await _history(state, caller, thread_id, limit, before)


@router.post("/threads/{thread_id}/history")
async def post_history(thread_id: str, body: HistoryQuery, state: State, caller: Auth) -> list[dict[str, Any]]:
    history = await _history(state, caller, thread_id, body.limit, body.before)
    if body.metadata:
        history = [h for h in history if all(h["metadata"].get(k) == v for k, v in body.metadata.items())]
    return history
