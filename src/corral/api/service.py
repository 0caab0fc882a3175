"""Starting runs the way LangGraph clients ask: admission control, multitask strategies,
stateless runs on a temporary thread, and resuming a run parked in `ctx.wait_for_message`.

Everything that can refuse a request (an unknown assistant, an unsupported option, an input too
large, a full queue, a busy thread) is checked before anything is written.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from .._ids import new_id
from .._json import dumps
from ..errors import PayloadTooLarge, SessionNotFound, StoreError
from ..store.base import RunRecord, RunStatus
from .auth import Caller
from .convert import API_KEY, InvalidInput, input_from_lc
from .errors import Busy, TooManyRuns
from .schemas import RunCreate
from .state import ApiState
from .streams import last_event_id, stream_modes, waiting_step

_ACTIVE = (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.QUEUED)


@dataclass(frozen=True, slots=True)
class Started:
    """A run a request created or resumed, and where its client's stream begins."""

    run: RunRecord
    modes: list[str]
    after: int = 0  # Corral events already seen: a resumed run streams from here
    resumed: bool = False


def _unsupported(body: RunCreate) -> None:
    """Options that would change what a run does and that Corral cannot honour: refuse them."""
    checks = [
        ("checkpoint", body.checkpoint is not None, "runs start from the thread's current values"),
        ("checkpoint_id", body.checkpoint_id is not None, "runs start from the thread's current values"),
        ("interrupt_before", bool(body.interrupt_before), "pause inside an agent with ctx.wait_for_message"),
        ("interrupt_after", bool(body.interrupt_after), "pause inside an agent with ctx.wait_for_message"),
        ("webhook", body.webhook is not None, "webhooks are not supported; join or stream the run"),
        ("after_seconds", bool(body.after_seconds), "scheduled runs are not supported; use ctx.sleep"),
    ]
    for field, present, hint in checks:
        if present:
            raise InvalidInput(field, f"not supported by Corral: {hint}")
    if body.command is not None:
        if body.command.goto is not None or body.command.update is not None:
            raise InvalidInput("command", "only command.resume is supported")
        if body.input is not None:
            raise InvalidInput("command", "send either input or command, not both")


async def active_runs(state: ApiState, thread_id: str, tenant: str) -> list[RunRecord]:
    # one read for all three: a run claimed between two reads (queued, then running) would be missed
    return await state.app.store.list_runs(session_id=thread_id, status=_ACTIVE, tenant=tenant, limit=1000)


async def _admit(state: ApiState, caller: Caller) -> None:
    settings = state.settings
    active, queued = await state.store.admission_counts(caller.tenant)
    if active >= settings.max_queued_per_tenant:
        state.metrics.admission_rejected.labels("tenant").inc()
        raise TooManyRuns(
            f"tenant {caller.tenant!r} has {settings.max_queued_per_tenant} runs queued or running "
            "(max_queued_per_tenant); retry later",
            retry_after=5,
        )
    if queued >= settings.max_queued_total:
        state.metrics.admission_rejected.labels("total").inc()
        stats = await state.app.store.stats(time.time())  # for Retry-After: only when refusing
        raise TooManyRuns(
            f"{settings.max_queued_total} runs are queued (max_queued_total); retry later",
            retry_after=min(60.0, max(1.0, stats.get("oldest_queued_age_seconds", 0.0) / 2)),
        )


async def _settle(state: ApiState, run: RunRecord, tenant: str, timeout: float) -> RunRecord:
    """Wait until a cancelled run has really ended (its worker may be another process)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not run.status.terminal:
        if time.monotonic() > deadline:
            raise Busy(f"run {run.id} did not stop within {timeout:.0f}s; try again")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)
        run = await state.app.store.get_run(run.id, tenant)
    return run


async def rollback(state: ApiState, run: RunRecord, tenant: str) -> None:
    """Cancel a run, undo what it folded into its thread's values, and delete it."""
    if not run.status.terminal:
        run = await state.app.cancel(run.id, tenant=tenant)
        run = await _settle(state, run, tenant, max(10.0, 2 * state.settings.lease_seconds))
    checkpoints = await state.store.list_checkpoints(run.session_id, tenant, limit=10)
    for i, cp in enumerate(checkpoints):
        if cp.run_id == run.id:
            before = checkpoints[i + 1].values if i + 1 < len(checkpoints) else {}
            await state.store.update_session(run.session_id, tenant, time.time(), values=before)
            break
    await state.store.delete_run(run.id, tenant)


async def find_waiting(state: ApiState, thread_id: str, tenant: str) -> tuple[RunRecord, str] | None:
    """The thread's run parked in `ctx.wait_for_message`, with its step, if there is one."""
    for run in await state.app.store.list_runs(
        session_id=thread_id, status=RunStatus.WAITING, tenant=tenant, limit=100
    ):
        seq = await waiting_step(state.app, run)
        if seq is not None:
            return run, seq
    return None


async def start_run(state: ApiState, caller: Caller, thread_id: str | None, body: RunCreate) -> Started:
    """Create (or resume) the run a request asks for; `thread_id` None means a stateless run."""
    agent = state.agent(body.assistant_id)
    _unsupported(body)
    modes = stream_modes(body.stream_mode)
    app, tenant = state.app, caller.tenant

    if body.command is not None:
        if thread_id is None:
            raise InvalidInput("command", "a stateless run has no interrupted run to resume")
        await state.store.get_session(thread_id, tenant)
        found = await find_waiting(state, thread_id, tenant)
        if found is None:
            raise Busy(f"no run of thread {thread_id} is waiting for a message: nothing to resume")
        run = found[0]
        after = await last_event_id(app, run.id)
        await app.send_message(thread_id, body.command.resume, tenant=tenant)
        return Started(await app.get_run(run.id, tenant=tenant), modes, after=after, resumed=True)

    run_input = input_from_lc(body.input)
    size = len(dumps(run_input, what="the run's input"))
    if size > state.settings.max_input_bytes:
        raise PayloadTooLarge(
            f"input of {size} bytes is over max_input_bytes", size=size, limit=state.settings.max_input_bytes
        )
    created_thread = False
    if thread_id is not None:
        try:
            await state.store.get_session(thread_id, tenant)
        except SessionNotFound:
            if body.if_not_exists != "create":
                raise
            created_thread = True
    await _admit(state, caller)
    if thread_id is not None and not created_thread:
        active = await active_runs(state, thread_id, tenant)
        if active and body.multitask_strategy == "reject":
            raise Busy(
                f"thread {thread_id} has an active run ({active[0].id}); resume it with command.resume, "
                "or choose multitask_strategy enqueue, interrupt or rollback"
            )
        if body.multitask_strategy == "interrupt":
            for run in active:
                await app.cancel(run.id, tenant=tenant)
        elif body.multitask_strategy == "rollback":
            for run in active:
                await rollback(state, run, tenant)
    if created_thread:
        await state.store.create_session(
            thread_id, tenant, caller.principal, {"graph_id": agent.name}, time.time(), if_exists="do_nothing"
        )
    session_id = thread_id or new_id()
    metadata = {
        **(body.metadata or {}),
        API_KEY: {
            "multitask_strategy": body.multitask_strategy,
            "stream_mode": modes,
            "config": body.config or {},
            "context": body.context or {},
            "temporary": thread_id is None,
        },
    }
    try:
        run = await app.enqueue(
            agent.name,
            run_input,
            session_id=session_id,
            tenant=tenant,
            principal=caller.principal,
            roles=caller.roles,
            metadata=metadata,
        )
    except Exception:
        if created_thread:  # nothing half-written: the thread made for this run goes with it
            await _forget_thread(state, session_id, tenant)
        raise
    if thread_id is None and body.on_completion == "delete":
        state.spawn(state.delete_when_done(session_id, run.id, tenant), name=f"corral-api-cleanup-{run.id}")
    return Started(run, modes)


async def _forget_thread(state: ApiState, thread_id: str, tenant: str) -> None:
    try:
        await state.store.delete_session(thread_id, tenant)
    except StoreError:
        pass


def run_filter_status(value: str | None) -> Any:
    from .convert import RUN_STATUS_FILTER

    if value is None:
        return None
    if value not in RUN_STATUS_FILTER:
        raise InvalidInput("status", f"unknown run status {value!r}; use one of {', '.join(RUN_STATUS_FILTER)}")
    return RUN_STATUS_FILTER[value]
