"""The Store interface and the records that cross it.

A Store is the one source of truth. Every write that belongs to a run attempt carries a `Fence`
(run id + attempt) and is applied only while that attempt is current; otherwise it raises
`LeaseLost` and changes nothing.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # parked: sleeping or waiting for a message; holds no worker slot
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LIMIT_EXCEEDED = "limit_exceeded"

    @property
    def terminal(self) -> bool:
        return self not in _ACTIVE


_ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING})


class StepKind(StrEnum):
    STEP = "step"  # ctx.step(...)
    CHAT = "chat"  # ctx.chat(...)
    TOOL = "tool"  # ctx.call_tool(...)
    SLEEP = "sleep"  # ctx.sleep(...)
    MESSAGE = "message"  # ctx.wait_for_message(...)


class StepStatus(StrEnum):
    PENDING = "pending"  # a wait that has begun and parked; its deadline is in `result`
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Fence:
    """The claim a write is conditional on."""

    run_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    session_id: str
    tenant: str
    principal: str | None
    roles: tuple[str, ...]
    agent: str
    agent_version: str
    input: Any
    limits: dict[str, Any]
    status: RunStatus
    output: Any = None
    error: dict[str, Any] | None = None
    attempt: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    wake_at: float | None = None
    time_used: float = 0.0
    cancel_requested: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepRecord:
    run_id: str
    seq: str  # the step's position: "7", or "7.2.1" for a step inside a ctx.gather branch
    kind: StepKind
    name: str
    input_hash: str
    status: StepStatus
    result_json: str | None  # the JSON text of the result; None for a failed step
    error: dict[str, Any] | None
    attempt: int
    started_at: float
    finished_at: float | None


@dataclass(slots=True)  # not frozen: one per streamed token, and a frozen init costs 3x
class Event:
    """One thing a run tells its watchers; `id` is strictly increasing within the run. Treat it
    as immutable: the same object reaches every watcher."""

    run_id: str
    id: int
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewRun:
    id: str
    session_id: str
    tenant: str
    principal: str | None
    roles: tuple[str, ...]
    agent: str
    agent_version: str
    input_json: str
    limits: dict[str, Any]
    created_at: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Claim:
    """A run this worker now owns, with what it needs to replay it."""

    run: RunRecord
    steps: dict[str, StepRecord]
    last_event_id: int


@dataclass(frozen=True, slots=True)
class Renewal:
    lost: frozenset[str]  # runs whose lease this worker no longer holds
    cancel_requested: frozenset[str]


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    session_id: str
    payload: Any
    created_at: float


class SessionStatus(StrEnum):
    IDLE = "idle"
    BUSY = "busy"  # a run is queued or running
    INTERRUPTED = "interrupted"  # a run waits for a message
    ERROR = "error"  # the last run did not succeed


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    tenant: str
    principal: str | None
    metadata: dict[str, Any]
    values: dict[str, Any]  # the conversation state: at least "messages"
    status: SessionStatus
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The session's values after a run ended or after an explicit state update."""

    session_id: str
    id: int
    run_id: str | None
    values: dict[str, Any]
    metadata: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class Item:
    """A long-term memory item: a JSON object under (namespace, key), per tenant."""

    namespace: tuple[str, ...]
    key: str
    value: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant: str
    principal: str
    roles: tuple[str, ...]
    created_at: float


class Store(abc.ABC):
    """Durable state of sessions, runs, steps, events and messages."""

    announces_events = False  # whether other processes hear of written events at once (see subscribe_events)

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], None]] = []
        self._event_listeners: list[Callable[[str, bool], None]] = []

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call `listener(topic)` when work may have become available ("run", "message", "cancel").

        SQLite tells listeners in this process only (other processes poll); PostgreSQL relays
        the topics to every process with LISTEN/NOTIFY.
        """
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[str], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, topic: str) -> None:
        for listener in self._listeners:
            listener(topic)

    def subscribe_events(self, listener: Callable[[str, bool], None]) -> None:
        """Call `listener(run_id, changed)` when another process wrote events of the run and
        announced them (PostgreSQL's NOTIFY, when `announces_events`); `changed` when it may also
        have changed the run's status (ended, released, cancelled), not only added events of a step
        in flight. Otherwise watchers find them by polling."""
        self._event_listeners.append(listener)

    def _events_written(self, run_id: str, changed: bool) -> None:
        for listener in self._event_listeners:
            listener(run_id, changed)

    # lifecycle -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # runs ----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_run(self, run: NewRun) -> RunRecord:
        """Insert a queued run (and its session if new)."""

    @abc.abstractmethod
    async def claim_runs(
        self,
        owner: str,
        limit: int,
        agents: list[str],
        lease_seconds: float,
        now: float,
        run_id: str | None = None,
    ) -> list[Claim]:
        """Claim up to `limit` runnable runs: queued, parked and due, or leased and expired.

        A claim sets the owner and lease and increments `attempt`. At most one run of a session
        is active at a time, in arrival order. With `run_id`, only that run is considered.
        """

    @abc.abstractmethod
    async def lease_owners(self, prefix: str) -> list[str]:
        """The distinct owners whose id starts with `prefix` that hold leases on running runs."""

    @abc.abstractmethod
    async def expire_leases(self, owners: list[str], now: float) -> int:
        """End the leases of owners known to be dead, so their runs can be claimed at once."""

    @abc.abstractmethod
    async def renew_leases(
        self, owner: str, held: list[Fence], lease_seconds: float, now: float, time_used: dict[str, float]
    ) -> Renewal:
        """Extend the leases this worker holds; report the lost ones and the cancel requests."""

    @abc.abstractmethod
    async def record_step(self, fence: Fence, step: StepRecord, events: list[Event], *, announce: bool = False) -> None:
        """Write a step's record (and the events emitted since the last write), fenced. With
        `announce`, watchers in other processes hear of the events at once (see `append_events`)."""

    @abc.abstractmethod
    async def append_events(self, batches: Sequence[tuple[Fence, list[Event]]]) -> set[str]:
        """Write the events of steps in flight of many runs at once, each run's fenced on its
        attempt; return the runs whose fence failed (nothing of theirs is written). Watchers in
        other processes hear of the events when the backend can tell them (`announces_events`)."""

    @abc.abstractmethod
    async def park_run(
        self, fence: Fence, wake_at: float | None, time_used: float, events: list[Event], waiting_for_message: bool
    ) -> bool:
        """Release the slot until `wake_at` (or a message). Returns False without parking when a
        message for the session is already waiting, so the caller consumes it instead."""

    @abc.abstractmethod
    async def release_run(self, fence: Fence, time_used: float, events: list[Event]) -> None:
        """Give the run back to the queue at once (graceful drain), keeping its journal."""

    @abc.abstractmethod
    async def finish_run(
        self,
        fence: Fence,
        status: RunStatus,
        output_json: str | None,
        error: dict[str, Any] | None,
        time_used: float,
        events: list[Event],
    ) -> None:
        """Write the terminal outcome and the final events in one transaction, fenced."""

    @abc.abstractmethod
    async def request_cancel(self, run_id: str, tenant: str | None, now: float) -> RunRecord:
        """Cancel a run: a queued or parked one ends at once, a running one is flagged for its worker."""

    @abc.abstractmethod
    async def get_run(self, run_id: str, tenant: str | None = None) -> RunRecord:
        """The run, or RunNotFound (also when it belongs to another tenant)."""

    @abc.abstractmethod
    async def list_runs(
        self,
        *,
        session_id: str | None = None,
        status: RunStatus | Collection[RunStatus] | None = None,
        tenant: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs, newest first. `status` may name several statuses: they are read in one statement,
        so a run moving between two of them (queued to running) is never missed."""

    async def admission_counts(self, tenant: str) -> tuple[int, int]:
        """What admission control weighs before it queues a run, read at once: how many of the
        tenant's runs are queued or running, and how many runs of all tenants are queued.

        This portable version lists them; backends override it with one COUNT query."""
        active = len(await self.list_runs(status=(RunStatus.QUEUED, RunStatus.RUNNING), tenant=tenant, limit=1_000_000))
        return active, len(await self.list_runs(status=RunStatus.QUEUED, limit=1_000_000))

    @abc.abstractmethod
    async def list_steps(self, run_id: str) -> list[StepRecord]: ...

    @abc.abstractmethod
    async def list_events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Event]: ...

    # messages ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def deliver_message(self, session_id: str, payload_json: str, tenant: str | None, now: float) -> int:
        """Queue a message for the session and wake its waiting run; returns the message id."""

    @abc.abstractmethod
    async def consume_message(self, fence: Fence, step: StepRecord, events: list[Event]) -> Message | None:
        """Write `events`; then take the session's oldest unconsumed message and record its payload
        as `step`'s result, in the same transaction. None when there is no message."""

    # upkeep --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def prune(self, finished_before: float) -> int:
        """Delete journals and events of runs finished before the time; returns runs pruned."""

    @abc.abstractmethod
    async def stats(self, now: float) -> dict[str, float]:
        """Counts for the scaling signal and metrics: queued, running, waiting, due (parked runs
        whose timer fired or message arrived), and oldest_queued_age_seconds."""


def status_names(status: RunStatus | Collection[RunStatus] | None) -> list[str] | None:
    """The statuses a `list_runs(status=...)` asks for, as their names; None asks for all."""
    if status is None:
        return None
    return [str(status)] if isinstance(status, str) else [str(s) for s in status]
