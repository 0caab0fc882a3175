"""What every route of one API process shares: the App, settings, metrics and background work."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..agent import AnyAgent
from ..app import App
from ..engine.worker import Worker
from ..errors import StoreError
from ..telemetry.metrics import Metrics
from .auth import KeyCache
from .convert import assistant_id
from .errors import NotFound

log = logging.getLogger("corral.api")


@dataclass
class ApiState:
    app: App
    metrics: Metrics
    auth: bool = True
    heartbeat: float = 15.0
    started_at: float = field(default_factory=time.time)
    worker: Worker | None = None
    attached: Counter[str] = field(default_factory=Counter)  # streams and waits reading a run, by run id
    keys: KeyCache = field(default_factory=KeyCache)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    models_loading: asyncio.Task[None] | None = None  # App.load_models, when this process runs a worker
    _agents: dict[str, AnyAgent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for agent in self.app.agents.values():
            self._agents[agent.name] = agent
            self._agents[assistant_id(agent.name)] = agent

    @property
    def settings(self) -> Any:
        return self.app.settings

    @property
    def store(self) -> Any:
        # The session, item and key methods are on the stores that have them (SQLite today).
        return self.app.store

    def agent(self, assistant: str) -> AnyAgent:
        """An agent by assistant id (a UUID) or by name (= graph id)."""
        try:
            return self._agents[assistant]
        except KeyError:
            raise NotFound(f"no assistant {assistant!r}") from None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` in the background; it is cancelled when the API stops."""
        task = asyncio.create_task(coro, name=name)
        self.background.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("background task %s failed: %r", task.get_name(), exc)

    async def stop_background(self) -> None:
        tasks = list(self.background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def delete_when_done(self, session_id: str, run_id: str, tenant: str) -> None:
        """A stateless run's temporary thread: delete it once the run has ended and nobody in this
        process is still reading its events (a reconnect from elsewhere then finds it gone)."""
        try:
            await self.app.wait(run_id)
        except StoreError:
            return  # the run (and so its thread) is gone already
        while self.attached[run_id] > 0:
            await asyncio.sleep(0.05)
        try:
            await self.store.delete_session(session_id, tenant)
        except StoreError as exc:
            log.info("temporary thread %s not deleted: %s", session_id, exc)

    def attach(self, run_id: str) -> None:
        self.attached[run_id] += 1

    def detach(self, run_id: str) -> None:
        self.attached[run_id] -= 1
        if self.attached[run_id] <= 0:
            del self.attached[run_id]
