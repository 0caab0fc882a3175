"""asyncio helpers that keep a cancellation.

On Python 3.11, `asyncio.wait_for` returns normally when the task is cancelled in the same loop
iteration as the awaited thing completes: the cancellation is lost. A loop stopped by cancelling
its task (a worker's heartbeat, a relay) then runs on, and whoever awaits it waits forever.
`asyncio.timeout` does not lose it, so Corral uses that and never `wait_for`.
"""

from __future__ import annotations

import asyncio


async def woken(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `event`; whether it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


__all__ = ["woken"]
