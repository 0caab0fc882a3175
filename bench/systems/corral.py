"""Corral: an `@agent` function whose steps are `ctx.step(...)`, executed by an in-process Worker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from corral import App, Context, Limits, Settings, agent
from corral.engine.worker import Worker
from corral.store.base import RunStatus

from . import ExecLog, System, fake_llm, mark

LIMITS = Limits(max_steps=10_000, run_timeout=3_600)


async def noop(i: int) -> int:
    mark()
    return i


async def noop_quiet(i: int) -> int:
    return i


async def logged_llm(run: str, i: int, latency: float) -> int:
    ExecLog.write(run, i)
    await fake_llm(latency)
    return i


async def llm(latency: float) -> str:
    await fake_llm(latency)
    return "ok"


@agent(name="bench_seq", limits=LIMITS)
async def seq(ctx: Context, n: int) -> int:
    for i in range(n):
        await ctx.step("noop", noop, i)  # distinct arguments: identical ones in a row trip loop detection
    return n


@agent(name="bench_conc", limits=LIMITS)
async def conc(ctx: Context, n: int) -> int:
    for i in range(n):
        await ctx.step("noop", noop_quiet, i)
    return n


@agent(name="bench_llm", limits=LIMITS)
async def one_call(ctx: Context, latency: float) -> str:
    return await ctx.step("llm", llm, latency)


@agent(name="bench_recovery", limits=LIMITS)
async def recovery(ctx: Context, args: dict[str, Any]) -> int:
    for i in range(args["steps"]):
        await ctx.step("llm", logged_llm, args["run"], i, args["latency"])
    return args["steps"]


@agent(name="bench_parked", limits=LIMITS)
async def parked(ctx: Context, _: Any) -> Any:
    return await ctx.wait_for_message()


class CorralSystem(System):
    name = "corral"
    notes = "Corral defaults (SQLite synchronous=NORMAL, lease 15 s); worker concurrency = the workload's run count"

    async def __aenter__(self) -> CorralSystem:
        url = f"sqlite:///{self.db}" if self.backend == "sqlite" else self.db
        # Explicit settings: CORRAL_* variables in the environment must not change the benchmark.
        self.settings = Settings(database_url=url)
        self.app = App([seq, conc, one_call, recovery, parked], settings=self.settings)
        await self.app.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.app.close()

    @contextlib.asynccontextmanager
    async def worker(self, concurrency: int) -> AsyncIterator[Worker]:
        worker = self.app.worker(concurrency)
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.stop()
            await asyncio.wait_for(task, 120)

    async def _until(self, worker: Worker, target: int, timeout: float = 3_600) -> None:
        deadline = time.monotonic() + timeout
        while worker.completed < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.completed} of {target} runs finished")
            await asyncio.sleep(0.005)

    async def sequential(self, steps: int, runs: int) -> list[float]:
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            result = await self.app.run("bench_seq", steps)
            walls.append(time.perf_counter() - t0)
            assert result.ok, result.error
        return walls

    async def _burst(self, name: str, inputs: list[Any], concurrency: int) -> float:
        async with self.worker(concurrency) as worker:
            await asyncio.sleep(0.1)  # the worker is idle and waiting
            t0 = time.perf_counter()
            await asyncio.gather(*(self.app.submit(name, x) for x in inputs))
            await self._until(worker, len(inputs))
            return time.perf_counter() - t0

    async def throughput(self, runs: int, steps: int) -> float:
        return await self._burst("bench_conc", [steps] * runs, runs)

    async def fan_out(self, runs: int, latency: float) -> float:
        return await self._burst("bench_llm", [latency] * runs, runs)

    async def recovery_start(self, runs: int, steps: int, latency: float) -> None:
        await asyncio.gather(
            *(
                self.app.submit("bench_recovery", {"run": f"rec-{i}", "steps": steps, "latency": latency})
                for i in range(runs)
            )
        )
        async with self.worker(runs):
            await asyncio.Event().wait()  # until SIGKILL

    async def recovery_finish(self, runs: int, steps: int, latency: float, timeout: float) -> int:
        store = self.app.store
        async with self.worker(runs):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                counts = await store.stats(time.time())
                if not (counts["queued"] or counts["running"] or counts["waiting"]):
                    break
                await asyncio.sleep(0.05)
        return len(await store.list_runs(status=RunStatus.SUCCEEDED, limit=runs + 10))

    async def park(self, sessions: int) -> float:
        t0 = time.perf_counter()
        self._worker_cm = self.worker(100)
        self._worker = await self._worker_cm.__aenter__()
        store = self.app.store
        for start in range(0, sessions, 1_000):
            batch = range(start, min(start + 1_000, sessions))
            await asyncio.gather(*(self.app.submit("bench_parked", None, session_id=f"s-{i}") for i in batch))
        while (await store.stats(time.time()))["waiting"] < sessions:
            await asyncio.sleep(0.2)
        return time.perf_counter() - t0

    async def wake(self, sessions: int, count: int) -> float:
        base = self._worker.completed
        t0 = time.perf_counter()
        step = max(1, sessions // count)
        await asyncio.gather(*(self.app.send_message(f"s-{i * step}", {"text": "hi"}) for i in range(count)))
        await self._until(self._worker, base + count)
        elapsed = time.perf_counter() - t0
        await self._worker_cm.__aexit__(None, None, None)
        return elapsed
