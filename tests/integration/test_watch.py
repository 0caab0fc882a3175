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
