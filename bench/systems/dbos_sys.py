"""DBOS Transact: `@DBOS.workflow` functions whose steps are `@DBOS.step` coroutines."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dbos import DBOS, DBOSConfig, SetWorkflowID

from . import ExecLog, System, fake_llm, mark

RECV_TIMEOUT = 24 * 3_600.0  # a parked session waits for its message, not for DBOS's 60 s default


@DBOS.step()
async def noop(i: int) -> int:
    mark()
    return i


@DBOS.step()
async def noop_quiet(i: int) -> int:
    return i


@DBOS.step()
async def logged_llm(run: str, i: int, latency: float) -> int:
    ExecLog.write(run, i)
    await fake_llm(latency)
    return i


@DBOS.step()
async def llm(latency: float) -> str:
    await fake_llm(latency)
    return "ok"


@DBOS.workflow()
async def seq(n: int) -> int:
    for i in range(n):
        await noop(i)
    return n


@DBOS.workflow()
async def conc(n: int) -> int:
    for i in range(n):
        await noop_quiet(i)
    return n


@DBOS.workflow()
async def one_call(latency: float) -> str:
    return await llm(latency)


@DBOS.workflow()
async def recovery(run: str, steps: int, latency: float) -> int:
    for i in range(steps):
        await logged_llm(run, i, latency)
    return steps


@DBOS.workflow()
async def parked() -> Any:
    return await DBOS.recv_async(timeout_seconds=RECV_TIMEOUT)


class DBOSSystem(System):
    name = "dbos"
    notes = "DBOS defaults (system database pool 20, executor id 'local' so a restarted process recovers)"

    async def __aenter__(self) -> DBOSSystem:
        url = f"sqlite:///{self.db}" if self.backend == "sqlite" else self.db
        config: DBOSConfig = {"name": "corral-bench", "system_database_url": url}
        DBOS(config=config)
        DBOS.launch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        DBOS.destroy(destroy_registry=False)

    async def sequential(self, steps: int, runs: int) -> list[float]:
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            handle = await DBOS.start_workflow_async(seq, steps)
            assert await handle.get_result() == steps
            walls.append(time.perf_counter() - t0)
        return walls

    async def _burst(self, fn: Any, args: list[tuple[Any, ...]]) -> float:
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(DBOS.start_workflow_async(fn, *a) for a in args))
        await asyncio.gather(*(h.get_result() for h in handles))
        return time.perf_counter() - t0

    async def throughput(self, runs: int, steps: int) -> float:
        return await self._burst(conc, [(steps,)] * runs)

    async def fan_out(self, runs: int, latency: float) -> float:
        return await self._burst(one_call, [(latency,)] * runs)

    async def recovery_start(self, runs: int, steps: int, latency: float) -> None:
        async def start(i: int) -> None:
            with SetWorkflowID(f"rec-{i}"):
                await DBOS.start_workflow_async(recovery, f"rec-{i}", steps, latency)

        await asyncio.gather(*(start(i) for i in range(runs)))  # all at once, as in the other systems
        await asyncio.Event().wait()  # until SIGKILL

    async def recovery_finish(self, runs: int, steps: int, latency: float, timeout: float) -> int:
        # DBOS.launch() in __aenter__ already recovered this executor's PENDING workflows.
        async def one(i: int) -> bool:
            try:
                handle = await DBOS.retrieve_workflow_async(f"rec-{i}")
                return await handle.get_result() == steps
            except Exception:
                return False

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(runs))), timeout)
        return sum(results)

    async def park(self, sessions: int) -> float:
        t0 = time.perf_counter()
        for start in range(0, sessions, 1_000):
            batch = range(start, min(start + 1_000, sessions))

            async def start_one(i: int) -> None:
                with SetWorkflowID(f"s-{i}"):
                    await DBOS.start_workflow_async(parked)

            await asyncio.gather(*(start_one(i) for i in batch))
        # A session is parked once its recv has registered (its first step is recorded).
        while True:
            steps = await DBOS.list_workflow_steps_async(f"s-{sessions - 1}")
            if steps:
                break
            await asyncio.sleep(0.2)
        return time.perf_counter() - t0

    async def wake(self, sessions: int, count: int) -> float:
        step = max(1, sessions // count)
        ids = [f"s-{i * step}" for i in range(count)]
        t0 = time.perf_counter()
        await asyncio.gather(*(DBOS.send_async(wid, {"text": "hi"}) for wid in ids))
        handles = [await DBOS.retrieve_workflow_async(wid) for wid in ids]
        await asyncio.gather(*(h.get_result() for h in handles))
        return time.perf_counter() - t0
