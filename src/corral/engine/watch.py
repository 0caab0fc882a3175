"""Following one run's events: the store's history, then live events, no gap and no repeat.

`RunWatch` is the one implementation of "the events of run R after N, as they happen" behind
`App.watch` and the HTTP streams. It reads the store first, then takes live events from this
process's EventBus, and goes back to the store whenever the live path cannot vouch for the next
event (a gap, a poke, an overflowing buffer, or `poll_max` seconds of silence, for runs that
execute in another process). One task per watcher, woken once per batch of events: at a thousand
streams this path runs for every token of every stream.

A watcher that can handle some events synchronously (an HTTP stream writes a token to its socket)
calls `deliver_directly(handler)`: while the watcher waits in `next()` with nothing buffered, an
event that continues the sequence goes to `handler` inside `publish`, and no task wakes at all.
Events the handler declines, and every event while the watcher is busy with an earlier batch,
are buffered as before, so the order never changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import StoreError
from ..store.base import Event

if TYPE_CHECKING:
    from ..app import App


_STORE_PAGE = 1000  # what Store.list_events returns at most


class RunWatch:
    """A cursor over a run's events after `after`. `await next(timeout)` returns the next events
    in order (every one that is ready), or [] after `timeout` seconds without news; `ended` turns
    true once the `end` event has been returned or the run was deleted. `close()` when done."""

    def __init__(self, app: App, run_id: str, after: int = 0) -> None:
        self.app = app
        self.run_id = run_id
        # Kept: asyncio.get_running_loop() costs a getpid() system call, and `_direct` runs per token.
        self._loop = asyncio.get_running_loop()
        self.last = after
        self.ended = False
        self._sub = app.bus.subscribe(run_id)
        self._stale = True  # read the store before trusting the live buffer
        self._poll_at = 0.0
        self._poll_every = 0.0
        # A run executed elsewhere is followed through Redis too, when there is one (engine.live).
        self._relay = app.live if run_id not in app._runners else None
        self._attached = False
        self._handler: Callable[[Event], bool] | None = None
        self._waiting = False  # inside next(), every earlier event handed out: a direct event may go now
        self.live_at = 0.0  # when the last event went to the handler (loop time)

    def deliver_directly(self, handler: Callable[[Event], bool]) -> None:
        """Offer `handler` each live event that may be handled at once; True means it was."""
        self._handler = handler
        self._sub.direct = self._direct

    def _direct(self, event: Event) -> bool:
        if not self._waiting or self._stale or self.ended or event.type == "end" or event.id != self.last + 1:
            return False
        assert self._handler is not None
        if not self._handler(event):
            return False
        self.last = event.id
        self.live_at = now = self._loop.time()
        self._poll_at = now + self._poll_every
        return True

    def close(self) -> None:
        self._sub.direct = None
        if self._relay is not None:
            self._relay.detach(self._sub)
        self.app.bus.unsubscribe(self._sub)

    async def next(self, timeout: float) -> list[Event]:
        loop = self._loop
        deadline = loop.time() + timeout
        while not self.ended:
            if self._stale:
                if self._relay is not None and not self._attached:
                    self._attached = True
                    await self._relay.attach(self._sub)  # before reading the store: nothing falls between
                self._stale = False
                self._sub.overflowed = False
                relaying = self._relay is not None and self._relay.relaying
                self._poll_every = self.app.poll_for(self.run_id, relaying)
                self._poll_at = loop.time() + self._poll_every
                if out := await self._catch_up():
                    return out
            if out := self._take_live():
                # The live path works: the store is read after this much silence, not every
                # poll interval (a thousand streams would cost a thousand reads a second).
                self._poll_at = loop.time() + self._poll_every
                return out
            if self._stale:
                continue
            now = loop.time()
            if now >= self._poll_at:  # nothing live for a while: the run may be elsewhere, or gone
                if await self._gone():
                    self.ended = True
                    return []
                self._stale = True
                continue
            if now >= deadline:
                return []
            self._waiting = True
            try:
                # Direct events push `_poll_at` on while this waits: the timer follows it.
                await self._sub.wait(min(deadline, self._poll_at) - now, loop, lambda: min(deadline, self._poll_at))
            finally:
                self._waiting = False
        return []

    async def _catch_up(self) -> list[Event]:
        store = self.app.store
        found = list(await store.list_events(self.run_id, after=self.last))
        newest = found[-1].id if found else self.last
        if (runner := self.app._runners.get(self.run_id)) is not None:
            # Events of the step in progress are written only with its result or the next flush:
            # without them, a watcher arriving mid-step would see a gap.
            found += [e for e in runner.unwritten_events() if e.id > newest]
        elif self._relay is not None and len(found) < _STORE_PAGE:
            found += await self._relay.missed(self.run_id, newest)  # in Redis, not yet in the store
        return self._accept(found)

    def _take_live(self) -> list[Event]:
        items = self._sub.take()
        if self._sub.overflowed:
            self._stale = True
            return []
        return self._accept(items)

    def _accept(self, items: list[Event | None] | list[Event]) -> list[Event]:
        """The events that continue the sequence; a poke or a gap sends the watcher to the store."""
        out: list[Event] = []
        last = self.last
        for event in items:
            if event is None:
                self._stale = True
                break
            if event.id <= last:
                continue
            if event.id != last + 1:  # one still on its way to the store: read again
                self._stale = True
                break
            out.append(event)
            last = event.id
            if event.type == "end":
                self.ended = True
                break
        self.last = last
        return out

    async def _gone(self) -> bool:
        try:
            await self.app.store.get_run(self.run_id)
        except StoreError:
            return True
        return False
