"""LangGraph: a StateGraph whose node loops `n` times, checkpointed after every step
(`durability="sync"`), with the SQLite or PostgreSQL checkpointer. LangGraph has no worker: the
process that invokes the graph executes it, and a restarted process resumes a thread by invoking
it again with `None`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from . import ExecLog, System, fake_llm, mark


class State(TypedDict, total=False):
    run: str
    i: int
    n: int
    latency: float
    kind: str
    reply: Any


async def step(state: State) -> dict[str, Any]:
    i, kind = state["i"], state["kind"]
    if kind == "seq":
        mark()
    elif kind == "recovery":
        ExecLog.write(state["run"], i)
        await fake_llm(state["latency"])
    elif kind == "llm":
        await fake_llm(state["latency"])
    return {"i": i + 1}


def again(state: State) -> str:
    return "step" if state["i"] < state["n"] else END


async def wait_message(state: State) -> dict[str, Any]:
    return {"reply": interrupt("waiting for a message")}


def build(checkpointer: Any) -> tuple[Any, Any]:
    loop = StateGraph(State)
    loop.add_node("step", step)
    loop.add_edge(START, "step")
    loop.add_conditional_edges("step", again, ["step", END])
    waiting = StateGraph(State)
    waiting.add_node("wait", wait_message)
    waiting.add_edge(START, "wait")
    waiting.add_edge("wait", END)
    return loop.compile(checkpointer=checkpointer), waiting.compile(checkpointer=checkpointer)


def cfg(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}, "recursion_limit": 10_000}


class LangGraphSystem(System):
    name = "langgraph"
    notes = (
        'durability="sync"; AsyncSqliteSaver, or AsyncPostgresSaver on an AsyncConnectionPool of 20 '
        "(autocommit, prepare_threshold=0, dict_row: the documented setup)"
    )

    async def __aenter__(self) -> LangGraphSystem:
        self._stack = contextlib.AsyncExitStack()
        if self.backend == "sqlite":
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            saver = await self._stack.enter_async_context(AsyncSqliteSaver.from_conn_string(str(self.db)))
        else:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
            from psycopg.rows import dict_row
            from psycopg_pool import AsyncConnectionPool

            pool = AsyncConnectionPool(
                self.db,
                max_size=20,
                kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
                open=False,
            )
            await pool.open()
            self._stack.push_async_callback(pool.close)
            saver = AsyncPostgresSaver(pool)
        await saver.setup()
        self.graph, self.waiting = build(saver)
        self._n = 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _thread(self) -> str:
        self._n += 1
        return f"t-{self._n}"

    async def _invoke(self, state: State, thread: str | None = None) -> Any:
        return await self.graph.ainvoke(state, cfg(thread or self._thread()), durability="sync")

    async def sequential(self, steps: int, runs: int) -> list[float]:
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            out = await self._invoke({"i": 0, "n": steps, "kind": "seq"})
            assert out["i"] == steps
            walls.append(time.perf_counter() - t0)
        return walls

    async def throughput(self, runs: int, steps: int) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(self._invoke({"i": 0, "n": steps, "kind": "noop"}) for _ in range(runs)))
        return time.perf_counter() - t0

    async def fan_out(self, runs: int, latency: float) -> float:
        t0 = time.perf_counter()
        state: State = {"i": 0, "n": 1, "kind": "llm", "latency": latency}
        await asyncio.gather(*(self._invoke(state) for _ in range(runs)))
        return time.perf_counter() - t0

    async def recovery_start(self, runs: int, steps: int, latency: float) -> None:
        await asyncio.gather(
            *(
                self._invoke(
                    {"run": f"rec-{i}", "i": 0, "n": steps, "kind": "recovery", "latency": latency}, f"rec-{i}"
                )
                for i in range(runs)
            )
        )
        await asyncio.Event().wait()  # until SIGKILL

    async def recovery_finish(self, runs: int, steps: int, latency: float, timeout: float) -> int:
        async def one(i: int) -> bool:
            config = cfg(f"rec-{i}")
            snapshot = await self.graph.aget_state(config)
            if not snapshot.values:  # no checkpoint: the run's input was never saved
                return False
            if snapshot.next:  # unfinished: resume from the last checkpoint
                out = await self.graph.ainvoke(None, config, durability="sync")
                return out["i"] == steps
            return snapshot.values.get("i") == steps

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(runs))), timeout)
        return sum(results)

    async def park(self, sessions: int) -> float:
        t0 = time.perf_counter()
        for start in range(0, sessions, 1_000):
            batch = range(start, min(start + 1_000, sessions))
            await asyncio.gather(*(self.waiting.ainvoke({}, cfg(f"s-{i}"), durability="sync") for i in batch))
        return time.perf_counter() - t0

    async def wake(self, sessions: int, count: int) -> float:
        step = max(1, sessions // count)
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                self.waiting.ainvoke(Command(resume={"text": "hi"}), cfg(f"s-{i * step}"), durability="sync")
                for i in range(count)
            )
        )
        return time.perf_counter() - t0
