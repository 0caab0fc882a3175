"""RunWatch, the cursor behind App.watch and every HTTP stream: batches, gaps and overflow."""

import asyncio

from corral import App, Context, agent
from corral.engine.events import EventBus
from corral.engine.watch import RunWatch


@agent(name="emitter")
async def emitter(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.emit("tick", {"i": i})
    await ctx.step("after", lambda: 1)
    return n


async def test_a_watcher_gets_everything_ready_in_one_batch_in_order(database_url):
    async with App([emitter], database_url=database_url) as app:
        run_id = await app.submit("emitter", 50)
        cursor = RunWatch(app, run_id)
        batches = []
        try:
            await app.drive(run_id)  # all of it happens before the watcher looks
            while not cursor.ended:
                if batch := await cursor.next(1.0):
                    batches.append(batch)
        finally:
            cursor.close()
        events = [e for b in batches for e in b]
        assert [e.id for e in events] == list(range(1, len(events) + 1))
        assert events[-1].type == "end"
        assert len(batches) < len(events)  # not one wake-up per event


async def test_an_overflowing_watcher_catches_up_from_the_store_without_gaps(database_url):
    async with App([emitter], database_url=database_url) as app:
        app.bus = EventBus(maxsize=4)  # far fewer than the run emits between two reads
        run_id = await app.submit("emitter", 200)
        seen = []
        cursor = RunWatch(app, run_id)
        try:
            driver = asyncio.create_task(app.drive(run_id))
            while not cursor.ended:
                seen += await cursor.next(1.0)
            await driver
        finally:
            cursor.close()
        assert [e.id for e in seen] == list(range(1, len(seen) + 1))
        assert sum(1 for e in seen if e.type == "custom") == 200
        assert seen[-1].type == "end"


async def test_wait_is_woken_by_the_end_not_by_every_event(database_url):
    async with App([emitter], database_url=database_url) as app:
        run_id = await app.submit("emitter", 100)
        waiter = asyncio.create_task(app.wait(run_id, timeout=30))
        await asyncio.sleep(0.05)
        (sub,) = app.bus._subs[run_id]
        assert sub.ends_only
        await app.drive(run_id)
        result = await waiter
        assert result.status.value == "succeeded" and result.output == 100
        assert run_id not in app.bus._subs  # unsubscribed


@agent(name="ticker")
async def ticker(ctx: Context, rounds: int) -> int:
    """Rounds of six custom events: #0; a millisecond later #1 and #2; ten later #3, #4 and #5
    with nothing awaited between them. A step half-way."""
    for r in range(rounds):
        if r == rounds // 2:
            await ctx.step("middle", lambda: 1)
        for i in range(6):
            ctx.emit("tick", {"i": 6 * r + i})
            if i == 0:
                await asyncio.sleep(0.001)
            elif i == 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
    return rounds


async def _follow_directly(app: App, run_id: str, accept) -> tuple[list, list, list]:
    """Watch with a direct handler: (events it took, events next() handed out, both in the order
    the watcher received them). A batch takes 3 ms to go out, as an HTTP stream's write would."""
    direct, batched, timeline = [], [], []
    cursor = RunWatch(app, run_id)

    def handler(event) -> bool:
        if accept(event):
            direct.append(event)
            timeline.append(event)
            return True
        return False

    cursor.deliver_directly(handler)
    worker = asyncio.create_task(app.drive(run_id))
    try:
        while not cursor.ended:
            batch = await cursor.next(1.0)
            batched += batch
            if batch:
                await asyncio.sleep(0.003)
            timeline += batch
        await worker
    finally:
        cursor.close()
    return direct, batched, timeline


def _tick(event) -> int | None:
    return event.data["data"]["i"] if event.type == "custom" else None


async def test_live_events_go_to_a_direct_handler_in_order_with_the_rest(database_url):
    async with App([ticker], database_url=database_url) as app:
        run_id = await app.submit("ticker", 8)
        direct, batched, timeline = await _follow_directly(app, run_id, lambda e: e.type == "custom")
        assert [e.id for e in timeline] == list(range(1, len(timeline) + 1))  # in order, each once, no gap
        assert [_tick(e) for e in timeline if e.type == "custom"] == list(range(48))
        assert len(direct) > 36  # live ticks went straight to the handler...
        assert all(e.type == "custom" for e in direct)
        assert batched[-1].type == "end"  # ...and `end` always through next(), which ends the watch
        assert await app.events(run_id) == timeline  # the store has all of them too


async def test_nothing_overtakes_a_declined_event(database_url):
    """#0 and #4 of each round are declined: #1 and #2 come while the watcher still writes #0,
    and #5 while #4 is still buffered; all of them must wait their turn. #3 may go at once."""
    async with App([ticker], database_url=database_url) as app:
        run_id = await app.submit("ticker", 8)
        accept = lambda e: _tick(e) is not None and _tick(e) % 6 not in (0, 4)  # noqa: E731
        direct, _, timeline = await _follow_directly(app, run_id, accept)
        assert [e.id for e in timeline] == list(range(1, len(timeline) + 1))
        assert {_tick(e) % 6 for e in direct} == {3}
