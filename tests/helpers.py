"""Helpers shared by integration and chaos tests."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from corral import App
from corral.store.base import Event, RunStatus


def make_app(database_url: str, agents: Iterable[Any], **overrides: Any) -> App:
    overrides.setdefault("lease_seconds", 5.0)
    overrides.setdefault("poll_interval", 0.01)
    overrides.setdefault("poll_max", 0.2)
    overrides.setdefault("park_threshold", 0.2)
    return App(list(agents), database_url=database_url, **overrides)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def within(seconds: float, aw: Awaitable[Any]) -> Any:
    """Await `aw`, failing after `seconds` with the stack of every task on the loop, taken
    before anything is cancelled: a hang reports where each task was waiting."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        return task.result()
    out = io.StringIO()
    for other in asyncio.all_tasks():
        other.print_stack(limit=30, file=out)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise AssertionError(f"not done within {seconds}s; the tasks:\n{out.getvalue()}")


async def statuses(app: App, run_ids: Iterable[str]) -> list[RunStatus]:
    return [(await app.get_run(r)).status for r in run_ids]


def assert_event_order(events: list[Event]) -> None:
    """Ids strictly increasing by one from 1; metadata first; end last and only once."""
    assert [e.id for e in events] == list(range(1, len(events) + 1)), [e.id for e in events]
    assert events[0].type == "metadata"
    assert events[-1].type == "end"
    assert sum(e.type == "end" for e in events) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (the drain), then SIGKILL if it has not exited within 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
