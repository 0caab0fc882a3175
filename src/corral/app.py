"""App: agents + models + tools + store + settings, the one object everything receives."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ._ids import new_id
from ._json import dumps, loads
from .agent import Agent, AgentFunction, AnyAgent
from .config import Settings
from .engine.events import EventBus
from .engine.flush import EventFlusher
from .engine.live import LiveEvents
from .engine.runner import Runner
from .engine.watch import RunWatch
from .engine.worker import Worker
from .errors import AgentNotFound, PayloadTooLarge, UserError
from .models.base import ChatModel
from .models.sim import SimModel
from .store import open_store
from .store.base import Event, NewRun, RunRecord, RunStatus, StepRecord, Store
from .tools import Tool

_LOCAL_WAIT = 30.0  # App.wait's look at the store while a runner here has the run: a safety net only
_ANNOUNCED_WAIT = 10.0  # ... at most this long between looks when the store announces the run's end


class _State(Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended."""

    run_id: str
    session_id: str
    status: RunStatus
    output: Any
    error: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.SUCCEEDED

    @classmethod
    def of(cls, run: RunRecord) -> RunResult:
        return cls(run.id, run.session_id, run.status, run.output, run.error)


class App:
    """Corral's application object.

    `App(agents=[...])` reads its settings from `CORRAL_*` environment variables, with keyword
    overrides (`App(agents, database_url=...)`) or a whole `Settings`. Nothing connects until the
    app is opened, explicitly (`async with app:` / `await app.open()`) or by its first use.
    """

    def __init__(
        self,
        agents: Iterable[AnyAgent] = (),
        *,
        models: Mapping[str, ChatModel] | None = None,
        tools: Iterable[Tool] = (),
        settings: Settings | None = None,
        store: Store | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = settings.replace(**overrides) if settings else Settings.from_env(os.environ, **overrides)
        self._agents: dict[str, AnyAgent] = {}
        for a in agents:
            if not isinstance(a, (Agent, AgentFunction)):
                raise UserError(f"{a!r} is not an agent: use @agent or Agent(...)")
            if a.name in self._agents:
                raise UserError(f"two agents are named {a.name!r}")
            self._agents[a.name] = a
        self._models: dict[str, ChatModel] = dict(models or {})
        self._implicit_default = "default" not in self._models  # the CLI may fill it with a real model
        self._models.setdefault("default", SimModel())
        self._tools = {t.name: t for t in tools}
        self._store = store
        self._state = _State.NEW
        self._open_lock: asyncio.Lock | None = None
        self.bus = EventBus()
        self._live: LiveEvents | None = None
        self._flusher: EventFlusher | None = None
        self._runners: dict[str, Runner] = {}

    # lifecycle -----------------------------------------------------------------------------
    def configure(self, **changes: Any) -> None:
        """Change settings before the app is opened (the CLI applies its flags this way)."""
        if self._state is not _State.NEW:
            raise UserError("settings can only change before the app is opened")
        self.settings = self.settings.replace(**changes)

    async def open(self) -> App:
        if self._state is _State.CLOSED:
            raise UserError("this app was closed")
        if self._state is _State.OPEN:
            return self
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._state is _State.NEW:
                if self._store is None:
                    self._store = open_store(self.settings)
                await self._store.open()
                if self.settings.redis_url:
                    live = LiveEvents(self.settings.redis_url, max_events=self.settings.max_events_per_run)
                    try:
                        await live.open()
                    except BaseException:
                        await self._store.close()
                        raise
                    self._live = live
                self._store.subscribe_events(self.bus.poke)  # another process wrote a run's events
                if self.settings.event_flush_seconds:
                    self._flusher = EventFlusher(self._store, self.settings.event_flush_seconds)
                self._state = _State.OPEN
        return self

    async def close(self) -> None:
        if self._state is _State.OPEN and self._store is not None:
            if self._flusher is not None:
                await self._flusher.close()
            if self._live is not None:
                await self._live.close()
            await self._store.close()
            for model in self._models.values():
                await model.aclose()
        self._state = _State.CLOSED

    async def __aenter__(self) -> App:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def live(self) -> LiveEvents | None:
        """The Redis link that carries events between processes at once (None without redis_url)."""
        return self._live

    @property
    def flusher(self) -> EventFlusher | None:
        """Writes the events of this process's steps in flight (None with event_flush_seconds=0)."""
        return self._flusher

    @property
    def store(self) -> Store:
        if self._state is not _State.OPEN or self._store is None:
            raise UserError("the app is not open: use `async with app:` or `await app.open()`")
        return self._store

    def set_models(self, models: Mapping[str, ChatModel], *, fill_default: bool = False) -> None:
        """Add model routes before the app is opened; they replace routes of the same name.
        With `fill_default`, only a `default` route that the code did not set is filled."""
        if self._state is not _State.NEW:
            raise UserError("model routes can only change before the app is opened")
        if fill_default:
            if self._implicit_default and "default" in models:
                self._models["default"] = models["default"]
                self._implicit_default = False
            return
        self._models.update(models)
        if "default" in models:
            self._implicit_default = False

    @property
    def has_implicit_default(self) -> bool:
        """True when the code set no `default` model route (it is the sim until filled)."""
        return self._implicit_default

    @property
    def models(self) -> dict[str, ChatModel]:
        return dict(self._models)

    # registry ------------------------------------------------------------------------------
    def get_agent(self, name: str) -> AnyAgent:
        try:
            return self._agents[name]
        except KeyError:
            raise AgentNotFound(name, list(self._agents)) from None

    def agent_names(self) -> list[str]:
        return list(self._agents)

    @property
    def agents(self) -> dict[str, AnyAgent]:
        return dict(self._agents)

    async def load_models(self) -> None:
        """Load every route's local weights now, concurrently, rather than at the first call
        (see ChatModel.load); raises what a model raised, e.g. ConfigError for a missing file."""
        unique = {id(m): m for m in self._models.values()}
        await asyncio.gather(*(m.load() for m in unique.values()))

    def model(self, route: str) -> ChatModel:
        try:
            return self._models[route]
        except KeyError:
            raise UserError(f"no model route {route!r}; configured: {', '.join(sorted(self._models))}") from None

    def get_tool(self, name: str, agent: str | None = None) -> Tool:
        if agent is not None:
            for t in self.get_agent(agent).tools:
                if t.name == name:
                    return t
        try:
            return self._tools[name]
        except KeyError:
            raise UserError(f"no tool named {name!r}") from None

    # runs ----------------------------------------------------------------------------------
    async def submit(
        self,
        agent: str,
        input: Any = None,
        *,
        session_id: str | None = None,
        tenant: str | None = None,
        principal: str | None = None,
        roles: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Queue a run for the workers; returns its id."""
        run = await self.enqueue(
            agent, input, session_id=session_id, tenant=tenant, principal=principal, roles=roles, metadata=metadata
        )
        return run.id

    async def enqueue(
        self,
        agent: str,
        input: Any = None,
        *,
        session_id: str | None = None,
        tenant: str | None = None,
        principal: str | None = None,
        roles: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        """`submit`, returning the queued run's record rather than its id."""
        await self.open()
        spec = self.get_agent(agent)
        input_json = dumps(input, what="the run's input")
        if len(input_json) > self.settings.max_input_bytes:
            raise PayloadTooLarge(
                f"input of {len(input_json)} bytes is over max_input_bytes",
                size=len(input_json),
                limit=self.settings.max_input_bytes,
            )
        run = NewRun(
            id=new_id(),
            session_id=session_id or new_id(),
            tenant=tenant or self.settings.tenant,
            principal=principal,
            roles=tuple(roles),
            agent=spec.name,
            agent_version=spec.version,
            input_json=input_json,
            limits=spec.limits.to_dict(),
            created_at=time.time(),
            metadata=dict(metadata or {}),
        )
        return await self.store.create_run(run)

    async def run(self, agent: str, input: Any = None, **kwargs: Any) -> RunResult:
        """Run an agent in this process to its end (waiting through its parks) and return how it ended."""
        run_id = await self.submit(agent, input, **kwargs)
        return await self.drive(run_id)

    async def drive(self, run_id: str) -> RunResult:
        """Execute a submitted run in this process until it ends (another worker may help)."""
        await self.open()
        worker = Worker(self, concurrency=1, only=run_id)
        await worker.run()
        return RunResult.of(await self.store.get_run(run_id))

    async def wait(self, run_id: str, timeout: float | None = None) -> RunResult:
        """Wait for a run executed by any worker to end. Woken by the run's `end` alone (published
        once the outcome is committed), not by each of its events; runs elsewhere are polled."""
        await self.open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        sub = self.bus.subscribe(run_id, ends_only=True)
        # A store that announces changes (PostgreSQL's NOTIFY) pokes when a run elsewhere ends:
        # its reads are a safety net that backs off, so a thousand waits are not a thousand reads
        # a second. Otherwise a run elsewhere is seen ending only by reading it, every poll_max.
        remote_wait = self.settings.poll_max
        try:
            while not (run := await self.store.get_run(run_id)).status.terminal:
                # A runner of this process publishes the `end`, and the worker pokes when the
                # runner leaves without one (parked, released, abandoned): no need to poll.
                wait = _LOCAL_WAIT if run_id in self._runners else remote_wait
                if self.store.announces_events:
                    remote_wait = min(remote_wait * 2, max(self.settings.poll_max, _ANNOUNCED_WAIT))
                if deadline is not None:
                    if (left := deadline - loop.time()) <= 0:
                        raise TimeoutError(f"run {run_id} did not end within {timeout}s")
                    wait = min(wait, left)
                await sub.wait(wait, loop)
                for item in sub.take():
                    if item is not None and item.type == "end":  # published once the outcome is written
                        data = item.data
                        output = loads(dumps(data.get("output")))  # as the store would give it back
                        status = RunStatus(data["status"])
                        return RunResult(run_id, run.session_id, status, output, data.get("error"))
        finally:
            self.bus.unsubscribe(sub)
        return RunResult.of(run)

    async def send_message(self, session_id: str, payload: Any, *, tenant: str | None = None) -> int:
        """Deliver a message to a session; a run waiting in `wait_for_message` wakes up."""
        await self.open()
        return await self.store.deliver_message(session_id, dumps(payload, what="the message"), tenant, time.time())

    async def cancel(self, run_id: str, *, tenant: str | None = None) -> RunRecord:
        """Cancel a run; a running one is interrupted wherever it awaits."""
        await self.open()
        record = await self.store.request_cancel(run_id, tenant, time.time())
        if (runner := self._runners.get(run_id)) is not None:
            runner.request_cancel()
        self.bus.poke(run_id)
        return record

    async def get_run(self, run_id: str, *, tenant: str | None = None) -> RunRecord:
        await self.open()
        return await self.store.get_run(run_id, tenant)

    async def steps(self, run_id: str) -> list[StepRecord]:
        await self.open()
        return await self.store.list_steps(run_id)

    async def events(self, run_id: str, after: int = 0) -> list[Event]:
        await self.open()
        out: list[Event] = []
        while batch := await self.store.list_events(run_id, after=after):
            out.extend(batch)
            after = batch[-1].id
        return out

    async def watch(self, run_id: str, after: int = 0) -> AsyncIterator[Event]:
        """The run's events after `after`, live, ending with `end`: the store's history first,
        then this process's live events, falling back to the store for runs elsewhere."""
        await self.open()
        cursor = RunWatch(self, run_id, after)
        try:
            while not cursor.ended:
                for event in await cursor.next(self.settings.poll_max):
                    yield event
        finally:
            cursor.close()

    def poll_for(self, run_id: str, relaying: bool) -> float:
        """How long a watcher of `run_id` waits for news before it reads the store again: poll_max
        when news comes by itself (from this process's runner, from Redis, or announced by the
        store), else the flush interval, at which a runner elsewhere writes what it streams."""
        s = self.settings
        if relaying or run_id in self._runners or self.store.announces_events:
            return s.poll_max
        return min(s.poll_max, s.event_flush_seconds or s.poll_max)

    def worker(self, concurrency: int | None = None) -> Worker:
        return Worker(self, concurrency=concurrency)
