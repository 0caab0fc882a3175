"""The events of steps in flight reach the store in one write per tick for the whole process.

A step that streams (an LLM call) emits its tokens long before its result is written. So that
watchers in other processes see them as they come, the runners of one process hand their pending
events to one `EventFlusher`: every `interval / 2` seconds it writes the events of every runner
whose oldest pending event has waited at least that long, all runs in one fenced store write.
A thousand streaming runs cost twenty writes a second, not ten thousand; a step shorter than half
the interval writes its events with its result, as if there were no flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..errors import StoreError

if TYPE_CHECKING:
    from ..store.base import Event, Store
    from .runner import Runner

log = logging.getLogger("corral.flush")


class EventFlusher:
    """Writes the pending events of registered runners; one task while any runner is registered."""

    def __init__(self, store: Store, interval: float) -> None:
        self.store = store
        self.tick = interval / 2
        self.writes = 0  # store writes made, for tests and metrics
        self._runners: dict[str, Runner] = {}
        self._task: asyncio.Task[None] | None = None
        self._writing = False

    def add(self, runner: Runner) -> None:
        """`runner` has pending events (it calls this when its first one is emitted)."""
        self._runners[runner.run.id] = runner
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="corral-event-flusher")

    def discard(self, runner: Runner) -> None:
        if self._runners.get(runner.run.id) is runner:
            del self._runners[runner.run.id]
        if not self._runners and self._task is not None and not self._writing:
            self._task.cancel()  # asleep with nothing to do: a process without streaming runs has no flusher
            self._task = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        me = asyncio.current_task()
        try:
            while self._runners:
                await asyncio.sleep(self.tick)
                self._writing = True
                try:
                    await self.flush(time.monotonic() - self.tick)
                finally:
                    self._writing = False
        finally:
            if self._task is me:
                self._task = None

    async def flush(self, before: float) -> None:
        """Write the pending events of the runners whose oldest one was emitted at `before` or earlier."""
        batch: list[tuple[Runner, list[Event]]] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # a runner's status change waits for it
        for run_id, runner in list(self._runners.items()):
            since = runner.pending_since
            if since is None:
                del self._runners[run_id]  # its events went with a step's write meanwhile
            elif since <= before:
                del self._runners[run_id]
                batch.append((runner, runner.begin_flush(done)))
        if not batch:
            return
        self.writes += 1
        lost: set[str] | None = None
        try:
            lost = await self.store.append_events([(runner.fence, events) for runner, events in batch])
        except StoreError as exc:
            log.info("flushing the events of %d run(s) failed, they go with their next write: %s", len(batch), exc)
        finally:
            for runner, events in batch:
                runner.end_flush(events, failed=lost is None, lost=lost is not None and runner.run.id in lost)
            done.set_result(None)


__all__ = ["EventFlusher"]
