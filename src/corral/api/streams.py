"""A run's events as LangGraph stream parts.

`follow` reads a run's persisted events (live in this process, from the store otherwise) and
also notices when the run parks in `ctx.wait_for_message`: for a LangGraph client that is the end
of the run's stream (an interrupt), though the Corral run stays active until a message resumes it.

`Mapper` turns one Corral event into at most `SLOTS - 2` stream parts. A part's SSE id is
`corral_event_id * SLOTS + position`, so ids strictly increase, are the same from every process
and on every reconnect, and `Last-Event-ID` says exactly where to resume, even inside one event.
A stream that resumes a parked run after event N starts with its own metadata and values at the
two positions kept for that (N * SLOTS + 6 and + 7).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # json.dumps of a str with ensure_ascii=False, without its wrappers
from typing import TYPE_CHECKING, Any

from ..engine.watch import RunWatch
from ..errors import StoreError
from ..store import values as reducer
from ..store.base import Event, RunRecord, RunStatus, StepKind, StepStatus
from .convert import ai_chunk, assistant_id, error_json, input_to_lc, interrupt_json, values_to_lc

if TYPE_CHECKING:
    from ..app import App
    from .state import ApiState

SLOTS = 8
PRELUDE = 6
SUPPORTED_MODES = ("values", "updates", "messages-tuple", "custom", "events")
_FAILED = (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.LIMIT_EXCEEDED)

Part = tuple[str, Any]


class RawJSON(str):
    """A part's data already encoded as JSON (written as it is)."""


def sse_id(event_id: int, position: int) -> int:
    return event_id * SLOTS + position


def resume_point(last_event_id: str | None) -> tuple[int, int]:
    """`Last-Event-ID` as (Corral events to skip, SSE id to skip up to); (0, 0) when absent."""
    if not last_event_id:
        return 0, 0
    try:
        value = int(last_event_id)
    except ValueError:
        return 0, 0
    return (max(value, 0) // SLOTS, max(value, 0)) if value > 0 else (0, 0)


@dataclass(frozen=True, slots=True)
class Parked:
    """The run parked waiting for a message: nothing more happens until one is delivered."""

    run: RunRecord
    seq: str | None


def is_message_wait(event: Event) -> bool:
    return (
        event.type == "step"
        and event.data.get("kind") == StepKind.MESSAGE.value
        and event.data.get("status") == "waiting"
    )


def is_parked(run: RunRecord) -> bool:
    """Waiting and not yet woken: `deliver_message` sets `wake_at` to now in the same write."""
    return run.status is RunStatus.WAITING and (run.wake_at is None or run.wake_at > time.time())


async def waiting_step(app: App, run: RunRecord) -> str | None:
    """The position of the message step a waiting run is parked in; None when it sleeps."""
    if run.status is not RunStatus.WAITING:
        return None
    for step in await app.store.list_steps(run.id):
        if step.kind is StepKind.MESSAGE and step.status is StepStatus.PENDING:
            return step.seq
    return None


async def last_event_id(app: App, run_id: str) -> int:
    last = 0
    while batch := await app.store.list_events(run_id, after=last):
        last = batch[-1].id
    return last


async def follow(
    app: App, run_id: str, after: int, tick: float, direct: Callable[[Event], bool] | None = None
) -> AsyncIterator[list[Event] | Parked | None]:
    """The run's events after `after` in batches (all that are ready), ending with `end` or with
    `Parked`; None every `tick` seconds without news (the caller writes a heartbeat). Ends
    quietly if the run is deleted. Live events that `direct` handles at once (see
    RunWatch.deliver_directly) are not yielded; they count as news."""
    loop = asyncio.get_running_loop()
    cursor = RunWatch(app, run_id, after)
    if direct is not None:
        cursor.deliver_directly(direct)
    waiting = False
    if after > 0:
        previous = await app.store.list_events(run_id, after=after - 1, limit=1)
        waiting = bool(previous) and is_message_wait(previous[0])
    check = 0.02
    next_tick = loop.time() + tick
    try:
        while True:
            timeout = max(0.0, next_tick - loop.time())
            if waiting:
                timeout = min(timeout, check)
            batch = await cursor.next(timeout)
            if batch:
                next_tick = loop.time() + tick
                yield batch
                if cursor.ended:
                    return
                waiting, check = is_message_wait(batch[-1]), 0.02
                continue
            if cursor.ended:  # the run was deleted
                return
            if waiting:
                run = await app.store.get_run(run_id)
                if is_parked(run):
                    yield Parked(run, await waiting_step(app, run))
                    return
                check = min(check * 2, 0.5)
            if cursor.live_at + tick > next_tick:  # events went out directly meanwhile
                next_tick = cursor.live_at + tick
            elif loop.time() >= next_tick:
                next_tick = loop.time() + tick
                if (end := await _lost_end(app, run_id, cursor.last)) is not None:
                    yield [end]
                    return
                yield None
    finally:
        cursor.close()


async def _lost_end(app: App, run_id: str, last: int) -> Event | None:
    """An `end` for a run that ended but whose events are gone (pruned after retention), so that
    nobody follows a finished run forever; None while the run is active or has events to read."""
    try:
        run = await app.store.get_run(run_id)
    except StoreError:
        return None  # deleted: the producer notices and ends the stream
    if not run.status.terminal or await app.store.list_events(run_id, after=last, limit=1):
        return None
    return Event(run_id, last + 1, "end", {"status": run.status.value, "output": run.output, "error": run.error})


def stream_modes(value: str | Sequence[str] | None, default: Sequence[str] = ("values",)) -> list[str]:
    from .convert import InvalidInput

    if value is None or value == "" or value == []:
        return list(default)
    modes = [m for m in ([value] if isinstance(value, str) else list(value)) if m]
    if not modes:
        return list(default)
    for mode in modes:
        if mode not in SUPPORTED_MODES:
            raise InvalidInput(
                "stream_mode", f"stream mode {mode!r} is not supported; supported: {', '.join(SUPPORTED_MODES)}"
            )
    return list(dict.fromkeys(modes))


# values --------------------------------------------------------------------------------------
async def _run_checkpoints(
    state: ApiState, run: RunRecord, tenant: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(values before, values after) the run, from its checkpoint; None if it has none (yet)."""
    checkpoints = await state.store.list_checkpoints(run.session_id, tenant, limit=10)
    for i, cp in enumerate(checkpoints):
        if cp.run_id == run.id:
            before = checkpoints[i + 1].values if i + 1 < len(checkpoints) else {}
            return before, cp.values
    return None


async def values_during(state: ApiState, run: RunRecord, tenant: str) -> dict[str, Any]:
    """The thread's values as the run sees them: the values before it with its input folded in."""
    found = await _run_checkpoints(state, run, tenant) if run.status.terminal else None
    if found is not None:
        base = found[0]
    else:
        session = await state.store.get_session(run.session_id, tenant)
        base = session.values
        if run.status.terminal:
            return base
    return reducer.merge(base, reducer.input_update(run.input))


async def values_after(state: ApiState, run_id: str, tenant: str) -> tuple[RunRecord, dict[str, Any]]:
    """The run's final record and the thread's values right after it.

    An `end` seen live comes from the event bus a moment before the run's outcome is committed,
    so wait (briefly) for the store to say the run has ended."""
    run = await state.app.store.get_run(run_id, tenant)
    delay, deadline = 0.01, time.monotonic() + max(5.0, state.settings.lease_seconds)
    while not run.status.terminal and time.monotonic() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
        run = await state.app.store.get_run(run_id, tenant)
    found = await _run_checkpoints(state, run, tenant)
    if found is not None:
        return run, found[1]
    return run, (await state.store.get_session(run.session_id, tenant)).values


# mapping -------------------------------------------------------------------------------------
class Mapper:
    """Corral events of one run as LangGraph stream parts for the requested modes."""

    def __init__(self, state: ApiState, run: RunRecord, modes: Sequence[str], tenant: str) -> None:
        self.state = state
        self.run = run
        self.modes = set(modes)
        self.tenant = tenant
        self.thread_id = run.session_id
        self._token_seq: Any = None
        self._token_frame: tuple[str, str] | None = None

    def _lc_event(self, name: str, kind: str, data: dict[str, Any], seq: str | None = None) -> Part:
        return (
            "events",
            {
                "event": name,
                "name": kind,
                "run_id": self.run.id,
                "tags": [],
                "metadata": {"thread_id": self.thread_id, "graph_id": self.run.agent, "langgraph_step": seq},
                "data": data,
            },
        )

    async def _values(self, values: dict[str, Any]) -> Part:
        return ("values", values_to_lc(values, self.thread_id))

    async def start(self, attempt: int) -> list[Part]:
        """The metadata part and the values at the start (input folded in)."""
        parts: list[Part] = [("metadata", {"run_id": self.run.id, "thread_id": self.thread_id, "attempt": attempt})]
        if "values" in self.modes:
            run = await self.state.app.store.get_run(self.run.id, self.tenant)
            parts.append(await self._values(await values_during(self.state, run, self.tenant)))
        if "events" in self.modes:
            parts.append(
                self._lc_event("on_chain_start", self.run.agent, {"input": input_to_lc(self.run.input, self.run.id)})
            )
        return parts

    def map_now(self, event: Event) -> list[Part] | None:
        """The parts of a token or custom event, which need nothing from the store; None for
        every other kind, and for the first event (`map` gives those)."""
        return None if event.id == 1 else self._parts_now(event.type, event.data)

    def _parts_now(self, kind: str, data: dict[str, Any]) -> list[Part] | None:
        parts: list[Part] = []
        if kind == "token":
            if "messages-tuple" in self.modes:
                parts.append(("messages", self._token_json(data)))
            if "events" in self.modes:
                chunk = ai_chunk(data.get("text", ""), self._chunk_id(data))
                parts.append(self._lc_event("on_chat_model_stream", "chat", {"chunk": chunk}, data.get("seq")))
        elif kind == "custom":
            if "custom" in self.modes:
                parts.append(("custom", {"name": data.get("name"), "data": data.get("data")}))
            if "events" in self.modes:
                parts.append(self._lc_event("on_custom_event", str(data.get("name")), {"data": data.get("data")}))
        else:
            return None
        return parts

    async def map(self, event: Event) -> list[Part]:
        if event.id != 1 and (now := self._parts_now(event.type, event.data)) is not None:
            return now  # the common case, first
        parts: list[Part] = []
        if event.id == 1 and event.type != "metadata":  # ended before it started (cancelled while queued)
            parts += await self.start(self.run.attempt)
        kind, data = event.type, event.data
        if (now := self._parts_now(kind, data)) is not None:
            parts += now
        elif kind == "metadata":
            parts += await self.start(int(data.get("attempt") or 1))
        elif kind == "step":
            parts += self._step(data)
        elif kind == "end":
            parts += await self._end(data)
        return parts

    def _token_json(self, data: dict[str, Any]) -> RawJSON:
        """A `messages` part's data, [AIMessageChunk, metadata], encoded: everything but the text
        is the same for every token of a step, so it is encoded once per step."""
        seq = data.get("seq")
        if self._token_seq != seq or self._token_frame is None:
            meta = {
                "run_id": self.run.id,
                "thread_id": self.thread_id,
                "graph_id": self.run.agent,
                "langgraph_node": self.run.agent,
                "langgraph_step": seq,
            }
            frame = json.dumps([ai_chunk("\0", self._chunk_id(data)), meta], ensure_ascii=False, separators=(",", ":"))
            head, _, tail = frame.partition('"\\u0000"')
            self._token_seq, self._token_frame = seq, (head, tail)
        head, tail = self._token_frame
        return RawJSON(head + encode_basestring(str(data.get("text", ""))) + tail)

    def _chunk_id(self, data: dict[str, Any]) -> str:
        return f"run-{self.run.id}-{data.get('seq')}"

    def _step(self, data: dict[str, Any]) -> list[Part]:
        parts: list[Part] = []
        status, name, seq = data.get("status"), str(data.get("name")), data.get("seq")
        step_kind = data.get("kind")
        lc_kind = {"chat": "chat_model", "tool": "tool"}.get(str(step_kind), "chain")
        if status in ("completed", "failed") and "updates" in self.modes:
            update = {k: v for k, v in data.items() if k != "name"}
            parts.append(("updates", {name: update}))
        if "events" in self.modes:
            phase = "start" if status in ("started", "waiting") else "end"
            parts.append(self._lc_event(f"on_{lc_kind}_{phase}", name, dict(data), seq))
        return parts

    async def _end(self, data: dict[str, Any]) -> list[Part]:
        run, values = await values_after(self.state, self.run.id, self.tenant)
        status = run.status if run.status.terminal else RunStatus(str(data.get("status")))
        parts: list[Part] = []
        if "updates" in self.modes and status is RunStatus.SUCCEEDED:
            parts.append(("updates", {run.agent: values_to_lc(reducer.output_update(run.output), self.thread_id)}))
        if "values" in self.modes:
            parts.append(await self._values(values))
        if status in _FAILED:
            parts.append(("error", error_json(run.error or data.get("error"), status)))
        if "events" in self.modes:
            parts.append(self._lc_event("on_chain_end", run.agent, {"output": run.output}))
        parts.append(("end", {"run_id": run.id, "status": _lg_status(status)}))
        return parts

    async def parked(self, parked: Parked) -> list[Part]:
        """The end of a LangGraph stream for a run now waiting for a message (an interrupt)."""
        interrupt = interrupt_json(parked.run.id, parked.seq)
        parts: list[Part] = []
        if "updates" in self.modes:
            parts.append(("updates", {"__interrupt__": [interrupt]}))
        if "values" in self.modes:
            values = await values_during(self.state, parked.run, self.tenant)
            parts.append(("values", {**values_to_lc(values, self.thread_id), "__interrupt__": [interrupt]}))
        parts.append(("end", {"run_id": parked.run.id, "status": "interrupted"}))
        return parts


def _lg_status(status: RunStatus) -> str:
    from .convert import run_status

    return run_status(status)


async def final_result(state: ApiState, run_id: str, tenant: str, after: int) -> dict[str, Any]:
    """What `runs.wait` and `runs.join` return: the thread's values when the run ends, with
    `__error__` if it failed, or with `__interrupt__` if it parked waiting for a message."""
    async for item in follow(state.app, run_id, after, tick=state.heartbeat):
        if isinstance(item, Parked):
            values = await values_during(state, item.run, tenant)
            out = values_to_lc(values, item.run.session_id)
            out["__interrupt__"] = [interrupt_json(item.run.id, item.seq)]
            return out
    try:
        run, values = await values_after(state, run_id, tenant)
    except StoreError:
        return {"__error__": {"error": "RunNotFound", "message": f"run {run_id} was deleted"}}
    out = values_to_lc(values, run.session_id)
    if run.status in _FAILED:
        out["__error__"] = error_json(run.error, run.status)
    return out


__all__ = [
    "PRELUDE",
    "SLOTS",
    "Mapper",
    "Parked",
    "RawJSON",
    "assistant_id",
    "final_result",
    "follow",
    "last_event_id",
    "resume_point",
    "stream_modes",
    "waiting_step",
]
