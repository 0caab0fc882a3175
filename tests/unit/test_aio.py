"""A loop stopped by cancelling its task stops, even when what it awaited completes at the same time."""

from __future__ import annotations

import asyncio

from corral._aio import woken


async def _loop(event: asyncio.Event, wait) -> None:
    while True:
        await wait(event)
        event.clear()


async def _cancelled_as_the_event_is_set(wait) -> bool:
    event = asyncio.Event()
    task = asyncio.create_task(_loop(event, wait))
    await asyncio.sleep(0.01)  # the loop waits on the event
    event.set()
    task.cancel()  # in the same iteration as the wake-up
    done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return bool(done) and task.cancelled()


async def test_a_cancellation_that_meets_a_wake_up_is_kept():
    assert await _cancelled_as_the_event_is_set(lambda e: woken(e, 10.0))


async def test_woken_says_whether_the_event_was_set():
    event = asyncio.Event()
    assert not await woken(event, 0.01)
    event.set()
    assert await woken(event, 0.01)
