"""One attempt at a claimed run: replay from the journal, fenced step writes, limits, parking.

The agent's code runs as a task. Each step looks up its position in the journal: a hit returns
the recorded result (replay) without running anything; a miss runs the step, then writes its
result conditional on this attempt still owning the run. Parking and draining unwind the agent's
coroutine with a private BaseException; the run resumes later by replay on any worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .._json import dumps, loads
from ..agent import Limits
from ..config import VersionPolicy
from ..errors import (
    LeaseLost,
    LimitExceeded,
    NonDeterminismError,
    NotSerializable,
    RunCancelled,
    RunInterrupt,
    StepError,
    StepTimeout,
    StoreError,
)
from ..models.base import ChatModel, ChatRequest, ChatResponse, Delta
from ..store.base import Claim, Event, Fence, RunStatus, StepKind, StepRecord, StepStatus

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("corral.runner")

step_key: ContextVar[str | None] = ContextVar("corral_step_key", default=None)


class _Branch:
    __slots__ = ("count", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0


branch: ContextVar[_Branch | None] = ContextVar("corral_branch", default=None)


class Park(RunInterrupt):
    """Unwinds the agent so the run can wait without holding a slot."""

    def __init__(self, wake_at: float | None, message: bool) -> None:
        super().__init__(f"park until {wake_at} (message={message})")
        self.wake_at = wake_at
        self.message = message

    def merge(self, other: Park) -> Park:
        times = [t for t in (self.wake_at, other.wake_at) if t is not None]
        return Park(min(times) if times else None, self.message or other.message)


class Release(RunInterrupt):
    """Unwinds the agent so a draining worker can hand the run back."""


class Abandon(RunInterrupt):
    """The store cannot be reached: leave the run; its lease expires and another attempt resumes it."""


class Outcome(StrEnum):
    FINISHED = "finished"
    PARKED = "parked"
    RELEASED = "released"
    ABANDONED = "abandoned"


class Runner:
    """Executes one attempt of one claimed run."""

    def __init__(self, app: App, claim: Claim) -> None:
        self.app = app
        self.store = app.store
        self.settings = app.settings
        self.run = claim.run
        self.fence = Fence(claim.run.id, claim.run.attempt)
        self.agent = app.get_agent(claim.run.agent)
        self.limits = Limits.from_dict(claim.run.limits)
        self.journal: dict[str, StepRecord] = dict(claim.steps)
        self.status: RunStatus | None = None
        self.cancel_requested = claim.run.cancel_requested
        self.draining = False
        self.inflight: dict[str, str] = {}
        self._next_event = claim.last_event_id + 1
        self._pending: list[Event] = []  # emitted, not yet handed to the store
        self.pending_since: float | None = None  # when the oldest pending event was emitted (monotonic)
        self._live = app.live  # Redis, which gets every event at once (None unless redis_url is set)
        self._flusher = app.flusher  # writes the events of steps in flight (None without event_flush_seconds)
        self._flush_every = self.settings.event_flush_seconds
        self._flushing: list[Event] = []  # on their way to the store in a flush
        self._flushed: asyncio.Future[None] | None = None  # done once that flush is over
        self._stop_reason: str | None = None
        self._stopped_steps: list[str] = []
        self._task: asyncio.Task[Any] | None = None
        self._started = time.monotonic()
        self._reset()

    # state ---------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._top = 0
        self._unreached = set(self.journal)
        self._steps = 0
        self._tokens = 0
        self._journal_bytes = 0
        self._last_key: tuple[str, str, str] | None = None
        self._streak = 0

    @property
    def replaying(self) -> bool:
        """True while journaled steps lie ahead: what the code does now already happened once."""
        return bool(self._unreached)

    def time_used(self) -> float:
        return self.run.time_used + (time.monotonic() - self._started)

    def emit(self, type_: str, data: dict[str, Any], *, force: bool = False) -> None:
        if not force and self._next_event > self.settings.max_events_per_run:
            raise LimitExceeded(
                "max_events_per_run", step=None, detail=f"more than {self.settings.max_events_per_run} events"
            )
        event = Event(self.run.id, self._next_event, type_, data)
        self._next_event += 1
        if not self._pending:
            self.pending_since = time.monotonic()
            if self._flusher is not None and type_ != "end":
                self._flusher.add(self)
        self._pending.append(event)
        if type_ != "end":  # live; `end` only once the outcome is written, so a watcher can rely on it
            self.app.bus.publish(event)
            if self._live is not None:
                self._live.publish(event, self.run.attempt)

    def unwritten_events(self) -> tuple[Event, ...]:
        """Events emitted but not yet in the store (they go with the next write or flush): what a
        watcher that subscribes now has seen neither in the store nor on the bus."""
        return (*self._flushing, *self._pending)

    def _take_events(self) -> list[Event]:
        events, self._pending = self._pending, []
        self.pending_since = None
        return events

    # flushing: events of a step in flight reach the store (and other processes) while it runs
    def begin_flush(self, done: asyncio.Future[None]) -> list[Event]:
        """The EventFlusher takes the pending events for a write of its own, over when `done` is."""
        events = self._flushing = self._take_events()
        self._flushed = done
        return events

    def end_flush(self, events: list[Event], *, failed: bool = False, lost: bool = False) -> None:
        """The flush of `events` is over: written, refused (`lost`: this attempt lost the run) or
        `failed` (they go back to the head of the queue and leave with the next write)."""
        self._flushing = []
        if failed and self._stop_reason is None:
            self._pending[:0] = events
            self.pending_since = time.monotonic()  # tried again a tick later, not at once
            if self._flusher is not None:
                self._flusher.add(self)
        if lost:
            self.stop("lease_lost")  # a zombie: its events must not reach anyone

    async def _flush_settled(self) -> None:
        """Wait for a flush under way: a status change written before it would fence it out."""
        if self._flushed is not None and not self._flushed.done():
            await asyncio.shield(self._flushed)

    def _stop_flushing(self) -> None:
        if self._flusher is not None:
            self._flusher.discard(self)

    def stop(self, reason: str) -> None:
        """Stop the attempt: "cancel", "timeout", "drain" or "lease_lost" (which overrides all)."""
        if self._stop_reason is None or reason == "lease_lost":
            self._stop_reason = reason
            self._stopped_steps = list(self.inflight.values())
        if self._task is not None and not self._task.done():
            self._task.cancel(f"corral: {reason}")

    def request_cancel(self) -> None:
        self.cancel_requested = True
        self.stop("cancel")

    def request_drain(self) -> None:
        self.draining = True

    # the attempt ---------------------------------------------------------------------------
    async def execute(self) -> Outcome:
        run = self.run
        try:
            if run.cancel_requested:
                return await self._finish(
                    RunStatus.CANCELLED, None, {"type": "RunCancelled", "message": "cancelled", "step": None}
                )
            if run.agent_version != self.agent.version and self.settings.on_version_change is VersionPolicy.FAIL:
                return await self._finish(
                    RunStatus.FAILED,
                    None,
                    {
                        "type": "VersionMismatch",
                        "step": None,
                        "message": f"run recorded agent version {run.agent_version}, this worker has "
                        f"{self.agent.version} (on_version_change=fail)",
                    },
                )
            if self._next_event == 1:
                self.emit(
                    "metadata",
                    {"run_id": run.id, "session_id": run.session_id, "agent": run.agent, "attempt": run.attempt},
                )
            timer = None
            if self.limits.run_timeout:
                remaining = self.limits.run_timeout - run.time_used
                if remaining <= 0:
                    return await self._finish(RunStatus.TIMED_OUT, None, self._timeout_error())
                timer = asyncio.get_running_loop().call_later(remaining, self.stop, "timeout")
            try:
                while True:
                    outcome = await self._attempt()
                    if outcome is not None:
                        return outcome
            finally:
                if timer is not None:
                    timer.cancel()
        except (LeaseLost, Abandon) as exc:
            log.warning("run %s attempt %d abandoned: %s", run.id, run.attempt, exc)
            return Outcome.ABANDONED
        finally:
            self._stop_flushing()

    async def _attempt(self) -> Outcome | None:
        """Run the agent from the top (replaying the journal); None means run it again."""
        from ..context import Context

        self._reset()
        ctx = Context(self)
        self._task = task = asyncio.create_task(
            self.agent.execute(ctx, self.run.input), name=f"corral-run-{self.run.id}"
        )
        if self._stop_reason is not None:
            task.cancel()
        try:
            output = await task
        except asyncio.CancelledError:
            if self._stop_reason is None:
                raise  # this runner itself is being cancelled
            return await self._stopped()
        except BaseException as exc:  # noqa: BLE001 - every way the agent ends is an outcome
            return await self._ended_by(exc)
        if self._stop_reason is not None:
            return await self._stopped()
        try:
            output_json = dumps(output, what=f"the output of agent {self.run.agent}")
        except NotSerializable as exc:
            return await self._finish(
                RunStatus.FAILED, None, {"type": "NotSerializable", "message": str(exc), "step": None}
            )
        return await self._finish(RunStatus.SUCCEEDED, output_json, None, output)

    async def _ended_by(self, exc: BaseException) -> Outcome | None:
        if self._stop_reason is not None and not isinstance(exc, (LeaseLost, Abandon)):
            return await self._stopped()
        if isinstance(exc, Park):
            await self._flush_settled()
            parked = await self._write(
                self.store.park_run(self.fence, exc.wake_at, self.time_used(), self._take_events(), exc.message)
            )
            return Outcome.PARKED if parked else None
        if isinstance(exc, Release):
            return await self._release()
        if isinstance(exc, (LeaseLost, Abandon)):
            raise exc
        if isinstance(exc, RunCancelled):
            return await self._finish(
                RunStatus.CANCELLED, None, {"type": "RunCancelled", "message": str(exc), "step": None}
            )
        if isinstance(exc, LimitExceeded):
            return await self._finish(
                RunStatus.LIMIT_EXCEEDED,
                None,
                {"type": "LimitExceeded", "limit": exc.limit, "step": exc.step, "message": str(exc)},
            )
        if isinstance(exc, NonDeterminismError):
            return await self._finish(
                RunStatus.FAILED,
                None,
                {
                    "type": "NonDeterminismError",
                    "step": exc.step,
                    "seq": exc.seq,
                    "recorded": exc.recorded,
                    "current": exc.current,
                    "message": str(exc),
                },
            )
        if isinstance(exc, StepTimeout):
            return await self._finish(
                RunStatus.TIMED_OUT,
                None,
                {"type": "StepTimeout", "limit": "step_timeout", "step": exc.step, "message": str(exc)},
            )
        if isinstance(exc, Exception):
            return await self._finish(
                RunStatus.FAILED,
                None,
                {
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "step": getattr(exc, "step", None),
                    "error_type": getattr(exc, "error_type", None),
                    "traceback": "".join(traceback.format_exception(exc, limit=-8))[-4000:],
                },
            )
        raise exc  # KeyboardInterrupt, SystemExit: not ours to record

    async def _stopped(self) -> Outcome:
        reason = self._stop_reason
        steps = ", ".join(self._stopped_steps) or None
        if reason == "lease_lost":
            log.warning("run %s attempt %d abandoned: its lease was lost", self.run.id, self.run.attempt)
            return Outcome.ABANDONED
        if reason == "drain":
            return await self._release()
        if reason == "cancel":
            return await self._finish(
                RunStatus.CANCELLED, None, {"type": "RunCancelled", "message": "cancelled while running", "step": steps}
            )
        return await self._finish(RunStatus.TIMED_OUT, None, self._timeout_error(steps))

    def _timeout_error(self, steps: str | None = None) -> dict[str, Any]:
        return {
            "type": "RunTimeout",
            "limit": "run_timeout",
            "step": steps,
            "message": f"run exceeded run_timeout={self.limits.run_timeout}s",
        }

    async def _release(self) -> Outcome:
        await self._flush_settled()
        await self._write(self.store.release_run(self.fence, self.time_used(), self._take_events()))
        return Outcome.RELEASED

    async def _finish(
        self, status: RunStatus, output_json: str | None, error: dict[str, Any] | None, output: Any = None
    ) -> Outcome:
        await self._flush_settled()
        self.emit("end", {"status": status.value, "output": output, "error": error}, force=True)
        events = self._take_events()
        await self._write(self.store.finish_run(self.fence, status, output_json, error, self.time_used(), events))
        self.app.bus.publish(events[-1])
        if self._live is not None:
            self._live.publish(events[-1], self.run.attempt)
        self.status = status
        return Outcome.FINISHED

    async def _write(self, aw: Awaitable[Any]) -> Any:
        try:
            return await aw
        except LeaseLost:
            self._stop_reason = "lease_lost"
            raise
        except StoreError as exc:
            raise Abandon(f"store unavailable: {exc}") from exc

    # steps ---------------------------------------------------------------------------------
    def allocate(self, kind: StepKind, name: str, input_hash: str) -> tuple[str, bool]:
        """The next position (deterministic: depends only on the order of calls in each branch)
        and whether this step completes a loop (identical tool calls or steps in a row)."""
        b = branch.get()
        if b is None:
            self._top += 1
            seq = str(self._top)
        else:
            b.count += 1
            seq = f"{b.prefix}.{b.count}"
        self._unreached.discard(seq)
        looping = False
        if kind in (StepKind.STEP, StepKind.TOOL) and self.limits.loop_threshold:
            key = (kind.value, name, input_hash)
            if key == self._last_key:
                self._streak += 1
            else:
                self._last_key, self._streak = key, 1
            looping = self._streak >= self.limits.loop_threshold
        return seq, looping

    def branch_prefix(self) -> str:
        b = branch.get()
        if b is None:
            self._top += 1
            return str(self._top)
        b.count += 1
        return f"{b.prefix}.{b.count}"

    def _verify(self, rec: StepRecord, seq: str, kind: StepKind, name: str, input_hash: str) -> None:
        if rec.kind != kind or rec.name != name or rec.input_hash != input_hash:
            raise NonDeterminismError(
                seq,
                {"kind": rec.kind.value, "name": rec.name, "input_hash": rec.input_hash},
                {"kind": kind.value, "name": name, "input_hash": input_hash},
            )

    def _boundary(self, label: str) -> None:
        if self.cancel_requested:
            raise RunCancelled(f"cancelled before step {label}")
        if self.draining:
            raise Release(f"draining before step {label}")

    def _count_live_step(self, label: str, looping: bool, name: str) -> None:
        self._boundary(label)
        self._steps += 1
        if self.limits.max_steps and self._steps > self.limits.max_steps:
            raise LimitExceeded("max_steps", step=label, detail=f"max_steps={self.limits.max_steps}")
        if looping:
            raise LimitExceeded(
                "loop_threshold",
                step=label,
                detail=f"{name} repeated with the same arguments {self._streak} times in a row",
            )

    async def run_step(
        self,
        seq: str,
        kind: StepKind,
        name: str,
        input_hash: str,
        looping: bool,
        execute: Callable[[], Awaitable[Any]],
        *,
        timeout: float | None,
        max_bytes: int | None = None,
        on_result: Callable[[Any, str], None] | None = None,
    ) -> Any:
        rec = self.journal.get(seq)
        label = f"#{seq} {kind.value}:{name}"
        if rec is not None:
            self._verify(rec, seq, kind, name, input_hash)
            self._steps += 1
            if rec.status is StepStatus.FAILED:
                raise self._replayed_error(rec)
            value = loads(rec.result_json) if rec.result_json is not None else None
            self._journal_bytes += len(rec.result_json or "")
            if on_result is not None:
                on_result(value, label)
            return value
        self._count_live_step(label, looping, name)
        started = time.time()
        self.emit("step", {"seq": seq, "kind": kind.value, "name": name, "status": "started"})
        self.inflight[seq] = label
        token = step_key.set(f"{self.run.id}:{seq}")
        timer = asyncio.timeout(timeout) if timeout else contextlib.nullcontext()
        try:
            async with timer:
                value = await execute()
        except TimeoutError as exc:
            if isinstance(timer, asyncio.Timeout) and timer.expired():
                err: StepError = StepTimeout(
                    f"no result within {timeout}s", error_type="StepTimeout", step=label, run_id=self.run.id
                )
                await self._record_failure(seq, kind, name, input_hash, started, err)
                raise err from None
            await self._record_failure(seq, kind, name, input_hash, started, self._step_error(exc, label))
            raise self._step_error(exc, label) from exc
        except Exception as exc:
            err = self._step_error(exc, label)
            await self._record_failure(seq, kind, name, input_hash, started, err)
            raise err from exc
        finally:
            step_key.reset(token)
            self.inflight.pop(seq, None)
        result_json = dumps(value, what=f"the result of step {label}")
        limit = max_bytes or self.settings.max_step_result_bytes
        if len(result_json) > limit:
            err = StepError(
                f"result of {len(result_json)} bytes is over the limit of {limit}",
                error_type="PayloadTooLarge",
                step=label,
                run_id=self.run.id,
            )
            await self._record_failure(seq, kind, name, input_hash, started, err)
            raise err
        self._journal_bytes += len(result_json)
        if self._journal_bytes > self.settings.max_journal_bytes:
            raise LimitExceeded(
                "max_journal_bytes", step=label, detail=f"journal over {self.settings.max_journal_bytes} bytes"
            )
        finished = time.time()
        self.emit(
            "step",
            {
                "seq": seq,
                "kind": kind.value,
                "name": name,
                "status": "completed",
                "duration": round(finished - started, 6),
            },
        )
        rec = StepRecord(
            self.run.id,
            seq,
            kind,
            name,
            input_hash,
            StepStatus.COMPLETED,
            result_json,
            None,
            self.run.attempt,
            started,
            finished,
        )
        await self._write(self.store.record_step(self.fence, rec, self._take_events(), announce=self._long(rec)))
        self.journal[seq] = rec
        if on_result is not None:
            on_result(value, label)
        return value

    def _step_error(self, exc: BaseException, label: str) -> StepError:
        return StepError(str(exc) or repr(exc), error_type=type(exc).__qualname__, step=label, run_id=self.run.id)

    def _replayed_error(self, rec: StepRecord) -> StepError:
        e = rec.error or {}
        cls = StepTimeout if e.get("type") == "StepTimeout" else StepError
        return cls(
            e.get("message", ""),
            error_type=e.get("error_type", "Exception"),
            step=e.get("step", rec.seq),
            run_id=self.run.id,
        )

    async def _record_failure(
        self, seq: str, kind: StepKind, name: str, input_hash: str, started: float, err: StepError
    ) -> None:
        finished = time.time()
        error = {"type": type(err).__name__, "error_type": err.error_type, "message": err.args[0], "step": err.step}
        self.emit(
            "step",
            {
                "seq": seq,
                "kind": kind.value,
                "name": name,
                "status": "failed",
                "duration": round(finished - started, 6),
                "error": error,
            },
        )
        rec = StepRecord(
            self.run.id,
            seq,
            kind,
            name,
            input_hash,
            StepStatus.FAILED,
            None,
            error,
            self.run.attempt,
            started,
            finished,
        )
        await self._write(self.store.record_step(self.fence, rec, self._take_events(), announce=self._long(rec)))
        self.journal[seq] = rec

    def _long(self, rec: StepRecord) -> bool:
        """Whether a step took at least the flush interval: its watchers in other processes are
        told of its result at once (a long step ends at most once per interval, so it is cheap)."""
        return bool(self._flush_every) and (rec.finished_at or rec.started_at) - rec.started_at >= self._flush_every

    async def chat_step(
        self, seq: str, route: str, model: ChatModel, request: ChatRequest, input_hash: str
    ) -> ChatResponse:
        label = f"#{seq} chat:{route}"
        limits = self.limits

        async def execute() -> dict[str, Any]:
            if limits.max_total_tokens and self._tokens >= limits.max_total_tokens:
                raise LimitExceeded("max_total_tokens", step=label, detail=f"{self._tokens} tokens used")
            final: ChatResponse | None = None
            last, repeats = None, 0
            async for item in model.stream(request):
                if isinstance(item, Delta):
                    if not item.text:
                        continue
                    self.emit("token", {"seq": seq, "text": item.text})
                    chunk = item.text.strip()
                    repeats = repeats + 1 if chunk and chunk == last else 1
                    last = chunk
                    if limits.max_repeated_chunks and repeats >= limits.max_repeated_chunks:
                        raise LimitExceeded(
                            "max_repeated_chunks",
                            step=label,
                            detail=f"the chunk {chunk[:40]!r} streamed {repeats} times in a row",
                        )
                else:
                    final = item
            if final is None:
                raise RuntimeError(f"model {route} ended its stream without a response")
            return final.to_dict()

        def count(value: dict[str, Any], label: str) -> None:
            usage = value.get("usage") or {}
            self._tokens += int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
            if limits.max_total_tokens and self._tokens > limits.max_total_tokens:
                raise LimitExceeded(
                    "max_total_tokens", step=label, detail=f"{self._tokens} tokens used of {limits.max_total_tokens}"
                )

        value = await self.run_step(
            seq, StepKind.CHAT, route, input_hash, False, execute, timeout=limits.step_timeout, on_result=count
        )
        return ChatResponse.from_dict(value)

    async def sleep_step(self, seq: str, seconds: float, input_hash: str) -> None:
        async def execute() -> dict[str, float]:
            return {"until": time.time() + seconds}

        value = await self.run_step(seq, StepKind.SLEEP, "sleep", input_hash, False, execute, timeout=None)
        remaining = value["until"] - time.time()
        if remaining <= 0:
            return
        if remaining < self.settings.park_threshold:
            await asyncio.sleep(remaining)
            return
        raise Park(value["until"], message=False)

    async def wait_step(self, seq: str, timeout: float | None, input_hash: str) -> Any:
        kind, name = StepKind.MESSAGE, "message"
        rec = self.journal.get(seq)
        if rec is not None and rec.status is not StepStatus.PENDING:
            return await self.run_step(seq, kind, name, input_hash, False, _unreachable, timeout=None)
        label = f"#{seq} message"
        if rec is not None:
            self._verify(rec, seq, kind, name, input_hash)
            self._steps += 1
            deadline = loads(rec.result_json or "{}").get("deadline")
            started = rec.started_at
        else:
            self._count_live_step(label, False, name)
            started = time.time()
            deadline = started + timeout if timeout is not None else None
        done = StepRecord(
            self.run.id,
            seq,
            kind,
            name,
            input_hash,
            StepStatus.COMPLETED,
            None,
            None,
            self.run.attempt,
            started,
            time.time(),
        )
        message = await self._write(self.store.consume_message(self.fence, done, self._take_events()))
        if message is not None:
            self.journal[seq] = replace(done, result_json=dumps(message.payload))
            self.emit("step", {"seq": seq, "kind": kind.value, "name": name, "status": "completed"})
            return message.payload
        if deadline is not None and time.time() >= deadline:
            self.emit("step", {"seq": seq, "kind": kind.value, "name": name, "status": "completed", "timed_out": True})
            timed_out = replace(done, result_json="null", finished_at=time.time())
            await self._write(self.store.record_step(self.fence, timed_out, self._take_events()))
            self.journal[seq] = timed_out
            return None
        if rec is None:
            self.emit("step", {"seq": seq, "kind": kind.value, "name": name, "status": "waiting", "deadline": deadline})
            pending = replace(
                done, status=StepStatus.PENDING, result_json=dumps({"deadline": deadline}), finished_at=None
            )
            await self._write(self.store.record_step(self.fence, pending, self._take_events()))
            self.journal[seq] = pending
        raise Park(deadline, message=True)


async def _unreachable() -> Any:
    raise AssertionError("a journaled step was executed again")
