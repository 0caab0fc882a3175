"""The bus's Subscription.wait: a watcher's deadline may move while it waits (every event handed
directly to an HTTP stream moves it); the wait then ends at the last deadline, not at the first,
and an event still ends it at once."""

import asyncio

from corral.engine.events import EventBus
from corral.store.base import Event


async def test_a_wait_whose_deadline_moves_ends_at_the_last_one():
    sub = EventBus().subscribe("r1")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.05
    asked = []

    def until() -> float:
        asked.append(loop.time())
        return deadline

    async def move() -> None:
        nonlocal deadline
        for _ in range(3):
            await asyncio.sleep(0.03)
            deadline = loop.time() + 0.05

    start = loop.time()
    mover = asyncio.create_task(move())
    await sub.wait(0.05, loop, until)
    await mover
    assert loop.time() >= deadline  # the third move's deadline: about 0.14 s after the start
    assert loop.time() - start >= 0.13
    assert 2 <= len(asked) <= 4  # asked when each armed time came, not polled
    assert sub._timer is None and sub._waiter is None


async def test_an_event_ends_a_wait_at_once_and_its_timer_goes():
    sub = EventBus().subscribe("r1")
    loop = asyncio.get_running_loop()
    start = loop.time()
    waiting = asyncio.create_task(sub.wait(10.0, loop, lambda: loop.time() + 10.0))
    await asyncio.sleep(0.01)
    sub.put(Event("r1", 1, "token", {"text": "hi"}))
    await asyncio.wait_for(waiting, 1.0)
    assert loop.time() - start < 1.0
    assert sub.take() == [Event("r1", 1, "token", {"text": "hi"})]
    assert sub._timer is None and sub._waiter is None


async def test_a_wait_without_until_ends_at_its_timeout():
    sub = EventBus().subscribe("r1")
    loop = asyncio.get_running_loop()
    start = loop.time()
    await sub.wait(0.03)
    assert 0.03 <= loop.time() - start < 1.0
