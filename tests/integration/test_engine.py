"""The engine's rules, against a real store (every backend in conftest.BACKENDS)."""

from __future__ import annotations

import asyncio
import random

import pytest

from corral import Agent, Context, Limits, RunStatus, SimModel, SimReply, StepError, agent, tool
from corral.errors import AgentNotFound, NotSerializable, SessionNotFound, StoreError, UserError
from corral.store.base import StepStatus
from helpers import assert_event_order, eventually, make_app

calls: dict[str, int] = {}


def count(key: str) -> None:
    calls[key] = calls.get(key, 0) + 1


@pytest.fixture(autouse=True)
def _reset_calls():
    calls.clear()


@agent(name="pipeline")
async def pipeline(ctx: Context, input: dict) -> dict:
    total = 0
    for i in range(input["steps"]):
        total += await ctx.step("add", _add, i)
    ctx.emit("progress", {"done": input["steps"]})
    return {"total": total, "key_seen": ctx.run_id in (await ctx.step("key", _key_of, ctx.run_id))}


async def _add(i: int) -> int:
    count(f"add{i}")
    return i


async def _key_of(run_id: str) -> str:
    return run_id + ":" + "x"


async def test_run_to_the_end_with_ordered_events(database_url):
    async with make_app(database_url, [pipeline]) as app:
        result = await app.run("pipeline", {"steps": 5})
        assert result.ok and result.output == {"total": 10, "key_seen": True}
        events = await app.events(result.run_id)
        assert_event_order(events)
        steps = [e.data for e in events if e.type == "step"]
        assert [s["status"] for s in steps[:2]] == ["started", "completed"]
        assert any(e.type == "custom" and e.data == {"name": "progress", "data": {"done": 5}} for e in events)
        assert events[-1].data["status"] == "succeeded"
        journal = await app.steps(result.run_id)
        assert [s.seq for s in journal] == ["1", "2", "3", "4", "5", "6"]
        assert all(s.status is StepStatus.COMPLETED and s.attempt == 1 for s in journal)


async def test_idempotency_key_is_run_and_position(database_url):
    @agent(name="keys")
    async def keys(ctx: Context, input: None) -> list[str]:
        async def key() -> str:
            return ctx.idempotency_key

        first = await ctx.step("k", key)
        second = await ctx.step("k2", key)
        with pytest.raises(UserError):
            _ = ctx.idempotency_key
        return [first, second]

    async with make_app(database_url, [keys]) as app:
        result = await app.run("keys")
        assert result.output == [f"{result.run_id}:1", f"{result.run_id}:2"]


async def test_step_errors_are_journaled_and_catchable(database_url):
    @agent(name="flaky")
    async def flaky(ctx: Context, input: None) -> dict:
        def boom() -> None:
            raise ValueError("no such order")

        try:
            await ctx.step("boom", boom)
        except StepError as exc:
            caught = {"type": exc.error_type, "step": exc.step, "message": exc.args[0]}
        return caught

    async with make_app(database_url, [flaky]) as app:
        result = await app.run("flaky")
        assert result.output == {"type": "ValueError", "step": "#1 step:boom", "message": "no such order"}
        (step,) = await app.steps(result.run_id)
        assert step.status is StepStatus.FAILED and step.error["error_type"] == "ValueError"


async def test_unhandled_error_fails_the_run_naming_the_step(database_url):
    @agent(name="fails")
    async def fails(ctx: Context, input: None) -> None:
        await ctx.step("explode", _explode)

    async with make_app(database_url, [fails]) as app:
        result = await app.run("fails")
        assert result.status is RunStatus.FAILED
        assert result.error["step"] == "#1 step:explode" and "kaboom" in result.error["message"]


async def _explode() -> None:
    raise RuntimeError("kaboom")


async def test_bad_input_is_refused_before_anything_is_written(database_url):
    async with make_app(database_url, [pipeline]) as app:
        with pytest.raises(AgentNotFound, match="pipeline"):
            await app.submit("nope", {})
        with pytest.raises(NotSerializable):
            await app.submit("pipeline", {"x": object()})
        with pytest.raises(SessionNotFound):
            await app.send_message("no-such-session", {"hi": 1})
        assert await app.store.list_runs() == []


async def test_output_that_is_not_json_fails_clearly(database_url):
    @agent(name="badout")
    async def badout(ctx: Context, input: None) -> object:
        return object()

    async with make_app(database_url, [badout]) as app:
        result = await app.run("badout")
        assert result.status is RunStatus.FAILED and result.error["type"] == "NotSerializable"


# --- fan-out and replay --------------------------------------------------------------------


@agent(name="fanout")
async def fanout(ctx: Context, input: dict) -> list[int]:
    async def branch(b: int) -> int:
        total = 0
        for i in range(3):
            total += await ctx.step("work", _jitter, b * 10 + i)
        return total

    results = await ctx.gather(*(branch(b) for b in range(4)))
    await ctx.sleep(input["sleep"])  # parks: the resume replays every branch
    tail = await ctx.gather(*(ctx.step("tail", _jitter, 100 + i) for i in range(3)))
    return results + tail


async def _jitter(x: int) -> int:
    await asyncio.sleep(random.uniform(0, 0.01))
    count(f"jitter{x}")
    return x


async def test_concurrent_branches_replay_deterministically_after_parking(database_url):
    async with make_app(database_url, [fanout], park_threshold=0.1) as app:
        result = await app.run("fanout", {"sleep": 0.3})
        assert result.ok, result.error
        assert result.output == [3, 33, 63, 93, 100, 101, 102]
        # every step body ran exactly once although the code ran twice (before and after the park)
        assert all(n == 1 for n in calls.values()) and len(calls) == 12 + 3
        run = await app.get_run(result.run_id)
        assert run.attempt == 2
        seqs = {s.seq for s in await app.steps(result.run_id)}
        assert {"1.1.1", "1.4.3", "2"} <= seqs


# --- parking -------------------------------------------------------------------------------


@agent(name="sleeper")
async def sleeper(ctx: Context, input: dict) -> str:
    await ctx.step("before", _add, 1)
    await ctx.sleep(input["seconds"])
    await ctx.step("after", _add, 2)
    return "rested"


async def test_sleep_parks_the_run_and_frees_the_slot(database_url):
    async with make_app(database_url, [sleeper]) as app:
        run_id = await app.submit("sleeper", {"seconds": 0.6})
        worker = app.worker(concurrency=2)
        task = asyncio.create_task(worker.run())

        async def parked() -> bool:
            return (await app.get_run(run_id)).status is RunStatus.WAITING

        await eventually(parked)
        assert worker.active == {}
        result = await app.wait(run_id, timeout=10)
        worker.stop()
        await task
        assert result.output == "rested" and calls == {"add1": 1, "add2": 1}


@agent(name="handoff")
async def handoff(ctx: Context, input: dict) -> dict:
    await ctx.step("greet", _add, 0)
    answer = await ctx.wait_for_message(timeout=input.get("timeout"))
    return {"answer": answer}


async def test_wait_for_message_parks_until_a_message_arrives(database_url):
    async with make_app(database_url, [handoff]) as app:
        run_id = await app.submit("handoff", {}, session_id="s-1")
        worker = app.worker()
        task = asyncio.create_task(worker.run())
        await eventually(lambda: _status_is(app, run_id, RunStatus.WAITING))
        assert worker.active == {}
        await app.send_message("s-1", {"text": "approved"})
        result = await app.wait(run_id, timeout=10)
        worker.stop()
        await task
        assert result.output == {"answer": {"text": "approved"}}
        waits = [s for s in await app.steps(run_id) if s.kind.value == "message"]
        assert len(waits) == 1 and waits[0].status is StepStatus.COMPLETED


async def test_a_message_sent_before_the_wait_is_consumed_and_timeouts_return_none(database_url):
    async with make_app(database_url, [handoff]) as app:
        first = await app.submit("handoff", {"timeout": 5}, session_id="s-2")
        await app.send_message("s-2", "early")
        assert (await app.drive(first)).output == {"answer": "early"}
        second = await app.submit("handoff", {"timeout": 0.3}, session_id="s-2")
        result = await app.drive(second)
        assert result.output == {"answer": None}


async def _status_is(app, run_id, status) -> bool:
    return (await app.get_run(run_id)).status is status


async def test_a_thousand_parked_sessions_hold_no_slots_or_coroutines(database_url):
    async with make_app(database_url, [handoff], poll_max=0.05) as app:
        ids = [await app.submit("handoff", {}, session_id=f"p-{i}") for i in range(1000)]
        baseline = len(asyncio.all_tasks())  # this test and the store's own (a pool, a listener)
        worker = app.worker(concurrency=50)
        task = asyncio.create_task(worker.run())

        async def all_waiting() -> bool:
            return (await app.store.stats(0))["waiting"] == 1000

        await eventually(all_waiting, timeout=120)
        assert worker.active == {}
        # the worker loop, its heartbeat and their wait_for tasks: nothing per parked run
        assert len(asyncio.all_tasks()) <= baseline + 4
        for i in range(1000):
            await app.send_message(f"p-{i}", i)

        async def all_done() -> bool:
            return (await app.store.stats(0))["waiting"] == 0 and not worker.active

        await eventually(all_done, timeout=120)
        worker.stop()
        await task
        outputs = [(await app.get_run(r)).output for r in ids[:5]]
        assert outputs == [{"answer": i} for i in range(5)]


# --- limits --------------------------------------------------------------------------------


async def test_endless_loop_stops_at_max_steps(database_url):
    @agent(name="endless", limits=Limits(max_steps=20))
    async def endless(ctx: Context, input: None) -> None:
        i = 0
        while True:
            try:
                await ctx.step("spin", _add, i)
            except Exception:  # a limit cannot be swallowed
                pass
            i += 1

    async with make_app(database_url, [endless]) as app:
        result = await app.run("endless")
        assert result.status is RunStatus.LIMIT_EXCEEDED
        assert result.error["limit"] == "max_steps" and result.error["step"] == "#21 step:spin"
        assert len(await app.steps(result.run_id)) == 20
        end = (await app.events(result.run_id))[-1]
        assert end.data["error"]["limit"] == "max_steps"


async def test_hanging_step_stops_at_step_timeout(database_url):
    @agent(name="hang", limits=Limits(step_timeout=0.2))
    async def hang(ctx: Context, input: None) -> None:
        await ctx.step("stuck", asyncio.sleep, 3600)

    async with make_app(database_url, [hang]) as app:
        result = await app.run("hang")
        assert result.status is RunStatus.TIMED_OUT
        assert result.error["limit"] == "step_timeout" and result.error["step"] == "#1 step:stuck"


async def test_slow_run_stops_at_run_timeout_naming_the_step_in_flight(database_url):
    @agent(name="slow", limits=Limits(run_timeout=0.5, step_timeout=10))
    async def slow(ctx: Context, input: None) -> None:
        for i in range(100):
            await ctx.step("tick", asyncio.sleep, 0.2, i)

    async with make_app(database_url, [slow]) as app:
        result = await app.run("slow")
        assert result.status is RunStatus.TIMED_OUT
        assert result.error["limit"] == "run_timeout" and result.error["step"].endswith("step:tick")


@tool
async def search(query: str) -> str:
    """Search."""
    count("search")
    return f"nothing for {query}"


async def test_repeated_identical_tool_calls_stop_by_loop_detection(database_url):
    model = SimModel(replies=[SimReply(tool_calls=(("search", {"query": "same"}),))])  # asks forever
    looper = Agent("looper", "Find it.", tools=[search], limits=Limits(loop_threshold=5))
    async with make_app(database_url, [looper], models={"default": model}) as app:
        result = await app.run("looper", "find x")
        assert result.status is RunStatus.LIMIT_EXCEEDED
        assert result.error["limit"] == "loop_threshold" and "tool:search" in result.error["step"]
        assert calls["search"] == 4


async def test_repeated_streamed_text_stops_by_loop_detection(database_url):
    @agent(name="babble", limits=Limits(max_repeated_chunks=20))
    async def babble(ctx: Context, input: None) -> str:
        return (await ctx.chat(["talk"])).text

    async with make_app(database_url, [babble], models={"default": SimModel(repeat_chunk=100)}) as app:
        result = await app.run("babble")
        assert result.status is RunStatus.LIMIT_EXCEEDED
        assert result.error["limit"] == "max_repeated_chunks" and result.error["step"] == "#1 chat:default"


async def test_token_budget(database_url):
    @agent(name="chatty", limits=Limits(max_total_tokens=40))
    async def chatty(ctx: Context, input: None) -> None:
        for i in range(50):
            await ctx.chat([f"tell me more about item {i}, in as much detail as you can"])

    async with make_app(database_url, [chatty]) as app:
        result = await app.run("chatty")
        assert result.status is RunStatus.LIMIT_EXCEEDED and result.error["limit"] == "max_total_tokens"
        assert result.error["step"].endswith("chat:default")


async def test_cancel_reaches_an_in_flight_model_call_and_frees_the_slot(database_url):
    @agent(name="waits_on_model")
    async def waits_on_model(ctx: Context, input: None) -> str:
        return (await ctx.chat(["slow please"])).text

    slow = SimModel(ttft=3600)
    async with make_app(database_url, [waits_on_model], models={"default": slow}) as app:
        run_id = await app.submit("waits_on_model")
        worker = app.worker(concurrency=1)
        task = asyncio.create_task(worker.run())
        await eventually(lambda: _called(slow))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await app.cancel(run_id)
        result = await app.wait(run_id, timeout=5)
        assert loop.time() - started < 2
        assert result.status is RunStatus.CANCELLED and result.error["step"] == "#1 chat:default"
        await eventually(lambda: _empty(worker))
        worker.stop()
        await task


async def _called(model: SimModel) -> bool:
    return model.calls > 0


async def _empty(worker) -> bool:
    return worker.active == {}


async def test_cancel_queued_and_parked_runs(database_url):
    async with make_app(database_url, [handoff, sleeper]) as app:
        queued = await app.submit("sleeper", {"seconds": 1})
        record = await app.cancel(queued)
        assert record.status is RunStatus.CANCELLED
        parked = await app.submit("handoff", {}, session_id="c-1")
        worker = app.worker()
        task = asyncio.create_task(worker.run())
        await eventually(lambda: _status_is(app, parked, RunStatus.WAITING))
        assert (await app.cancel(parked)).status is RunStatus.CANCELLED
        worker.stop()
        await task
        assert (await app.events(parked))[-1].data["status"] == "cancelled"


# --- versions and drain --------------------------------------------------------------------


def _versioned(step_name: str):
    @agent(name="versioned")
    async def versioned(ctx: Context, input: None) -> str:
        await ctx.step("first", _add, 1)
        await ctx.sleep(0.3)
        await ctx.step(step_name, _add, 2)
        return step_name

    return versioned


async def test_changed_code_raises_nondeterminism_naming_the_step(database_url):
    v1 = _versioned("second")
    async with make_app(database_url, [v1]) as app:
        run_id = await app.submit("versioned")
        await app.worker().run(burst=True)  # runs until it parks
        assert (await app.get_run(run_id)).status is RunStatus.WAITING

    @agent(name="versioned")
    async def v2(ctx: Context, input: None) -> str:
        await ctx.step("first_renamed", _add, 1)
        return "never"

    async with make_app(database_url, [v2]) as app:
        result = await app.drive(run_id)
        assert result.status is RunStatus.FAILED
        assert result.error["type"] == "NonDeterminismError"
        assert result.error["step"] == "#1 step:first_renamed"
        assert result.error["recorded"]["name"] == "first"


async def test_version_policy_fail(database_url):
    async with make_app(database_url, [_versioned("second")]) as app:
        run_id = await app.submit("versioned")
        await app.worker().run(burst=True)

    @agent(name="versioned")
    async def edited(ctx: Context, input: None) -> str:  # same steps, edited source
        await ctx.step("first", _add, 1)
        await ctx.sleep(0.3)
        await ctx.step("second", _add, 2)
        return "edited"

    async with make_app(database_url, [edited], on_version_change="fail") as app:
        result = await app.drive(run_id)
        assert result.status is RunStatus.FAILED and result.error["type"] == "VersionMismatch"
        assert (await app.get_run(run_id)).agent_version != edited.version


async def test_drain_releases_the_lease_at_once_and_another_worker_resumes(database_url):
    @agent(name="steady")
    async def steady(ctx: Context, input: None) -> int:
        for i in range(30):
            await ctx.step("s", _slow_add, i)
        return 30

    async with make_app(database_url, [steady], lease_seconds=60, drain_grace=5) as app:
        run_id = await app.submit("steady")
        first = app.worker()
        task = asyncio.create_task(first.run())
        await eventually(lambda: _steps_at_least(app, run_id, 5))
        first.stop()
        await task
        run = await app.get_run(run_id)
        assert run.status is RunStatus.QUEUED and run.lease_owner is None  # released, not expired
        result = await app.drive(run_id)
        assert result.ok and result.output == 30
        assert all(calls[f"slow{i}"] == 1 for i in range(30))


async def test_a_worker_that_reclaims_its_own_expired_run_keeps_renewing_the_new_attempt(database_url):
    # An overloaded worker fails to renew for longer than the lease; its own claim then takes the
    # run again. The new attempt must hold the slot and be renewed, not be dropped from the
    # worker's books when the fenced-out attempt ends (that looped, an attempt per lease, forever).
    @agent(name="long_step")
    async def long_step(ctx: Context, input: None) -> str:
        await ctx.step("wait", asyncio.sleep, 2.5)
        return "done"

    async with make_app(database_url, [long_step], lease_seconds=1.0) as app:
        store = app.store
        renew = store.renew_leases
        failing = True

        async def overloaded(*args, **kwargs):
            if failing:
                raise StoreError("the pool is exhausted (injected)")
            return await renew(*args, **kwargs)

        store.renew_leases = overloaded  # the real SQLite store, with renewals failing for a while
        run_id = await app.submit("long_step")
        worker = app.worker()
        task = asyncio.create_task(worker.run())
        await eventually(lambda: _attempt_at_least(app, run_id, 2), timeout=10)
        failing = False
        await eventually(lambda: _terminal(app, run_id), timeout=15)
        worker.stop()
        await task
        run = await app.get_run(run_id)
        assert run.status is RunStatus.SUCCEEDED and run.output == "done"
        assert run.attempt == 2, run.attempt


async def _attempt_at_least(app, run_id, n) -> bool:
    return (await app.get_run(run_id)).attempt >= n


async def _terminal(app, run_id) -> bool:
    return (await app.get_run(run_id)).status.terminal


async def _slow_add(i: int) -> int:
    await asyncio.sleep(0.02)
    count(f"slow{i}")
    return i


async def _steps_at_least(app, run_id, n) -> bool:
    return len(await app.steps(run_id)) >= n


async def test_runs_of_one_session_run_one_at_a_time_in_order(database_url):
    order: list[str] = []

    @agent(name="turn")
    async def turn(ctx: Context, input: str) -> str:
        async def note(stage: str) -> None:
            order.append(f"{input}:{stage}")
            await asyncio.sleep(0.02)

        await ctx.step("start", note, "start")
        await ctx.step("end", note, "end")
        return input

    async with make_app(database_url, [turn]) as app:
        ids = [await app.submit("turn", name, session_id="same") for name in "abc"]
        await app.worker(concurrency=10).run(burst=True)
        assert [(await app.get_run(r)).status for r in ids] == [RunStatus.SUCCEEDED] * 3
        assert order == ["a:start", "a:end", "b:start", "b:end", "c:start", "c:end"]


async def test_closed_app_refuses_use(database_url):
    app = make_app(database_url, [pipeline])
    await app.open()
    await app.close()
    with pytest.raises(UserError, match="closed"):
        await app.submit("pipeline", {"steps": 1})


async def test_workers_prune_finished_journals_but_keep_outcomes(database_url):
    async with make_app(
        database_url, [pipeline, handoff], journal_retention_seconds=0.2, prune_interval=0.3, lease_seconds=0.3
    ) as app:
        done = (await app.run("pipeline", {"steps": 3})).run_id
        waiting = await app.submit("handoff", {}, session_id="kept")
        worker = app.worker()
        task = asyncio.create_task(worker.run())
        await eventually(lambda: _status_is(app, waiting, RunStatus.WAITING))
        await eventually(lambda: _no_steps(app, done), timeout=10)
        worker.stop()
        await task
        run = await app.get_run(done)
        assert run.status is RunStatus.SUCCEEDED and run.output == {"total": 3, "key_seen": True}
        assert await app.events(done) == []
        assert len(await app.steps(waiting)) == 2  # an unfinished run keeps its journal


async def _no_steps(app, run_id) -> bool:
    return await app.steps(run_id) == []


async def test_a_watcher_arriving_mid_step_gets_the_tokens_live(database_url):
    """Events emitted but not yet written (they go with the step's write) must reach a watcher
    that subscribes in the middle of a streaming model call, live, not when the step ends."""

    @agent(name="talker")
    async def talker(ctx: Context, input: None) -> str:
        return (await ctx.chat(["tell me a long story"])).text

    story = " ".join(f"word{i}" for i in range(40))
    model = SimModel(replies=[story], tokens_per_second=20)  # ~2 s of streaming
    async with make_app(database_url, [talker], models={"default": model}) as app:
        run_id = await app.submit("talker")
        worker = app.worker()
        task = asyncio.create_task(worker.run())
        await eventually(lambda: _called(model))
        await asyncio.sleep(0.3)  # the step is streaming; nothing of it is written yet
        loop = asyncio.get_running_loop()
        subscribed = loop.time()
        first_token = chat_done = None
        async for event in app.watch(run_id):
            if event.type == "token" and first_token is None:
                first_token = loop.time() - subscribed
            if event.type == "step" and event.data["kind"] == "chat" and event.data["status"] == "completed":
                chat_done = loop.time() - subscribed
        worker.stop()
        await task
        assert first_token is not None and chat_done is not None
        assert first_token < 0.5 < chat_done, (first_token, chat_done)
        tokens = [e for e in await app.events(run_id) if e.type == "token"]
        assert "".join(e.data["text"] for e in tokens) == story
