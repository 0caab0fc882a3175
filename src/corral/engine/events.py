"""In-process fan-out of run events to live watchers, bounded per watcher.

The path of every streamed token, so it is kept cheap: `publish` appends to each watcher's buffer
and completes at most one waiting future; a watcher takes everything buffered at once. A watcher
that can handle an event at once (an SSE stream writing a token) sets `direct`: then nothing is
buffered and no task wakes up."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Callable

from ..store.base import Event


class Subscription:
    """A watcher's bounded buffer. When it overflows, `overflowed` is set and the watcher must
    catch up from the store (events are persisted), so a slow watcher never grows memory.
    `None` in the buffer is a poke: look in the store. `direct(event)`, when set, is offered each
    event while nothing is buffered; it returns True when it has handled the event."""

    __slots__ = ("_timer", "_waiter", "direct", "ends_only", "items", "maxsize", "overflowed", "run_id")

    def __init__(self, run_id: str, maxsize: int, ends_only: bool = False) -> None:
        self.run_id = run_id
        self.ends_only = ends_only
        self.maxsize = maxsize
        self.items: deque[Event | None] = deque()
        self.overflowed = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.direct: Callable[[Event], bool] | None = None

    def put(self, event: Event | None) -> None:
        if event is not None and self.direct is not None and not self.items and self.direct(event):
            return
        if len(self.items) < self.maxsize:
            self.items.append(event)
        else:
            self.overflowed = True
        if (waiter := self._waiter) is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> list[Event | None]:
        """Everything buffered, oldest first."""
        items = list(self.items)
        self.items.clear()
        return items

    async def wait(
        self,
        timeout: float,
        loop: asyncio.AbstractEventLoop | None = None,
        until: Callable[[], float] | None = None,
    ) -> None:
        """Until something is buffered (or overflowed), or `timeout` seconds pass. With `until`,
        the time is up only at the loop time it returns when asked at the end of `timeout`, and
        again at that time: a watcher whose deadline moves while it waits (every directly handled
        event moves it) is not woken to find it has moved. `loop`: the running loop, if the caller
        has it (asyncio.get_running_loop() costs a system call on Python 3.11)."""
        if self.items or self.overflowed or timeout <= 0:
            return
        loop = loop or asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._timer = loop.call_later(timeout, self._expire, loop, waiter, until)
        try:
            await waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiter = None

    def _expire(
        self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None], until: Callable[[], float] | None
    ) -> None:
        if waiter.done():
            return
        if until is not None and (when := until()) > loop.time():
            self._timer = loop.call_at(when, self._expire, loop, waiter, until)
            return
        self._timer = None
        waiter.set_result(None)


class EventBus:
    def __init__(self, maxsize: int = 10_000) -> None:
        self._subs: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._maxsize = maxsize
        self._taps: list[Callable[[Event], None]] = []

    def add_tap(self, tap: Callable[[Event], None]) -> None:
        """Also hand every event published in this process but tokens (one per streamed chunk) to
        `tap` (metrics); it must not block."""
        self._taps.append(tap)

    def subscribe(self, run_id: str, *, ends_only: bool = False) -> Subscription:
        """A watcher of `run_id`'s events; with `ends_only`, of its `end` (and pokes) alone."""
        sub = Subscription(run_id, self._maxsize, ends_only)
        self._subs[run_id].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.run_id]

    def publish(self, event: Event) -> None:
        if event.type != "token":
            for tap in self._taps:
                tap(event)
        subs = self._subs.get(event.run_id)
        if subs:
            end = event.type == "end"
            for sub in subs:
                if end or not sub.ends_only:
                    sub.put(event)

    def poke(self, run_id: str, changed: bool = True) -> None:
        """Tell watchers of `run_id` to look in the store: the run changed elsewhere, or with
        `changed` False, only its events did; then watchers of its `end` alone are not told (each
        of a thousand `App.wait`s would read the run at every flush of its tokens)."""
        for sub in self._subs.get(run_id, ()):
            if changed or not sub.ends_only:
                sub.put(None)

    def __len__(self) -> int:
        return sum(len(s) for s in self._subs.values())
