"""Temporal workflow definitions, in a module of their own: the workflow sandbox re-imports it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

# Activities are named, not imported: the sandbox must not load the worker-side code.
TIMEOUT = timedelta(seconds=15)  # start-to-close: a dead worker's activity is retried after this


async def _call(name: str, args: list[Any], local: bool) -> Any:
    if local:
        return await workflow.execute_local_activity(name, args=args, start_to_close_timeout=TIMEOUT)
    return await workflow.execute_activity(name, args=args, start_to_close_timeout=TIMEOUT)


@workflow.defn
class Steps:
    """`n` sequential steps of activity `name` (args: the step index, then `extra`)."""

    @workflow.run
    async def run(self, name: str, n: int, local: bool, run: str, latency: float) -> int:
        for i in range(n):
            if name == "logged_llm":
                await _call(name, [run, i, latency], local)
            else:
                await _call(name, [i], local)
        return n


@workflow.defn
class OneCall:
    @workflow.run
    async def run(self, latency: float, local: bool) -> str:
        return await _call("llm", [latency], local)


@workflow.defn
class Parked:
    """Waits for one signal, then ends with its payload."""

    def __init__(self) -> None:
        self.message: Any = None

    @workflow.signal
    def message_in(self, payload: Any) -> None:
        self.message = payload

    @workflow.run
    async def run(self) -> Any:
        await workflow.wait_condition(lambda: self.message is not None)
        return self.message
