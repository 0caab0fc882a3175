"""In-process fan-out of run events to live watchers, bounded per watcher."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from ..store.base import Event


class Subscription:
    """A watcher's bounded queue. When it overflows, `overflowed` is set and the watcher must
    catch up from the store (events are persisted), so a slow watcher never grows memory."""

    def __init__(self, run_id: str, maxsize: int) -> None:
        self.run_id = run_id
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    def put(self, event: Event | None) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True


class EventBus:
    def __init__(self, maxsize: int = 10_000) -> None:
        self._subs: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._maxsize = maxsize
        self._taps: list[Callable[[Event], None]] = []

    def add_tap(self, tap: Callable[[Event], None]) -> None:
        """Also hand every event published in this process to `tap` (metrics); it must not block."""
        self._taps.append(tap)

    def subscribe(self, run_id: str) -> Subscription:
        sub = Subscription(run_id, self._maxsize)
        self._subs[run_id].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.run_id]

    def publish(self, event: Event) -> None:
        for tap in self._taps:
            tap(event)
        for sub in self._subs.get(event.run_id, ()):
            sub.put(event)

    def poke(self, run_id: str) -> None:
        """Tell watchers of `run_id` to look in the store (the run changed elsewhere)."""
        for sub in self._subs.get(run_id, ()):
            sub.put(None)

    def __len__(self) -> int:
        return sum(len(s) for s in self._subs.values())
