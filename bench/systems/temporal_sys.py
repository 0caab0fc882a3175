"""Temporal: a workflow whose steps are activities (or local activities), executed by a Python
worker against the dev server of the `temporal` CLI, which the driver starts on 127.0.0.1 with a
fresh SQLite file (the dev server's only persistent store)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, ClassVar

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from . import ExecLog, System, fake_llm, mark
from ._temporal_workflows import OneCall, Parked, Steps

QUEUE = "corral-bench"
START_RPCS = 200
RESULT_POLLS = 500


@activity.defn
async def noop(i: int) -> int:
    mark()
    return i


@activity.defn
async def noop_quiet(i: int) -> int:
    return i


@activity.defn
async def logged_llm(run: str, i: int, latency: float) -> int:
    ExecLog.write(run, i)
    await fake_llm(latency)
    return i


@activity.defn
async def llm(latency: float) -> str:
    await fake_llm(latency)
    return "ok"


class TemporalSystem(System):
    name = "temporal"
    backends = ("sqlite",)
    local: ClassVar[bool] = False
    notes = (
        "dev server (SQLite file), sandboxed workflows, worker defaults (max_cached_workflows 1000) except "
        "max_concurrent_activities = the workload's run count; activity start_to_close 15 s"
    )

    async def __aenter__(self) -> TemporalSystem:
        self.client = await Client.connect(str(self.db))
        self._stack = contextlib.AsyncExitStack()
        self._started = False
        self._starts = asyncio.Semaphore(START_RPCS)
        self._polls = asyncio.Semaphore(RESULT_POLLS)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _worker(self, concurrency: int = 100) -> None:
        if self._started:  # one worker per process (the SDK refuses a second on the same queue)
            return
        self._started = True
        worker = Worker(
            self.client,
            task_queue=QUEUE,
            workflows=[Steps, OneCall, Parked],
            activities=[noop, noop_quiet, logged_llm, llm],
            max_concurrent_activities=max(100, concurrency),  # 100 is the SDK's default
            max_concurrent_local_activities=max(100, concurrency),
        )
        await self._stack.enter_async_context(worker)

    async def _start(self, wf: Any, args: list[Any], wid: str | None = None) -> Any:
        # At most START_RPCS start calls in flight: the dev server times out thousands of
        # simultaneous StartWorkflowExecution calls on this machine (W3 at 5,000), as a client
        # would learn to avoid; the workflows still all start as fast as the server accepts them.
        async with self._starts:
            return await self.client.start_workflow(wf, args=args, id=wid or f"w-{uuid.uuid4().hex}", task_queue=QUEUE)

    async def _result(self, handle: Any) -> Any:
        # A result is a long poll: thousands at once exceed the namespace's concurrent poller
        # limit (RPCError "namespace concurrent poller limit exceeded"), so at most RESULT_POLLS.
        async with self._polls:
            return await handle.result()

    async def sequential(self, steps: int, runs: int) -> list[float]:
        await self._worker()
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            handle = await self._start(Steps.run, ["noop", steps, self.local, "", 0.0])
            assert await handle.result() == steps
            walls.append(time.perf_counter() - t0)
        return walls

    async def _burst(self, wf: Any, args: list[Any], runs: int) -> float:
        await self._worker(runs)
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(self._start(wf, args) for _ in range(runs)))
        await asyncio.gather(*(self._result(h) for h in handles))
        return time.perf_counter() - t0

    async def throughput(self, runs: int, steps: int) -> float:
        return await self._burst(Steps.run, ["noop_quiet", steps, self.local, "", 0.0], runs)

    async def fan_out(self, runs: int, latency: float) -> float:
        return await self._burst(OneCall.run, [latency, self.local], runs)

    async def recovery_start(self, runs: int, steps: int, latency: float) -> None:
        await self._worker(runs)
        await asyncio.gather(
            *(
                self._start(Steps.run, ["logged_llm", steps, self.local, f"rec-{i}", latency], f"rec-{i}")
                for i in range(runs)
            )
        )
        await asyncio.Event().wait()  # until SIGKILL

    async def recovery_finish(self, runs: int, steps: int, latency: float, timeout: float) -> int:
        await self._worker(runs)

        async def one(i: int) -> bool:
            try:
                return await self._result(self.client.get_workflow_handle(f"rec-{i}")) == steps
            except Exception:
                return False

        return sum(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(runs))), timeout))

    async def park(self, sessions: int) -> float:
        await self._worker()
        t0 = time.perf_counter()
        for start in range(0, sessions, 1_000):
            batch = range(start, min(start + 1_000, sessions))
            await asyncio.gather(*(self._start(Parked.run, [], f"s-{i}") for i in batch))
        # Parked once the worker has run the last one's first workflow task.
        handle = self.client.get_workflow_handle(f"s-{sessions - 1}")
        while True:
            desc = await handle.describe()
            if desc.raw_description.workflow_execution_info.history_length >= 4:
                break
            await asyncio.sleep(0.2)
        return time.perf_counter() - t0

    async def wake(self, sessions: int, count: int) -> float:
        step = max(1, sessions // count)
        handles = [self.client.get_workflow_handle(f"s-{i * step}") for i in range(count)]
        t0 = time.perf_counter()
        await asyncio.gather(*(h.signal(Parked.message_in, {"text": "hi"}) for h in handles))
        await asyncio.gather(*(self._result(h) for h in handles))
        return time.perf_counter() - t0


class TemporalLocalSystem(TemporalSystem):
    name = "temporal-local"
    local = True
    notes = TemporalSystem.notes + "; steps are local activities (recorded in the workflow task, not scheduled)"
