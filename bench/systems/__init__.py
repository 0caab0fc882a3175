"""The systems bench/peers.py compares: one module each, all implementing `System`.

A system is used inside one child process per task (the driver samples that process's memory and
can SIGKILL it): `async with cls(backend, db, workdir) as s:` then one workload method. Every
workload runs the same logic: a run is a loop of steps, and a step either does nothing, appends
one line to an execution log, or awaits a simulated model call (`asyncio.sleep`).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, ClassVar

# Step-body timestamps of the sequential workload (perf_counter), appended by each system's step.
MARKS: list[float] = []


def mark() -> None:
    MARKS.append(time.perf_counter())


async def fake_llm(latency: float) -> None:
    """The simulated model call: the same latency in every system."""
    await asyncio.sleep(latency)


class ExecLog:
    """Counts step executions across processes: one `run:step` line per execution, O_APPEND."""

    _fd: ClassVar[int | None] = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> None:
        cls._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @classmethod
    def write(cls, run: str, step: int) -> None:
        if cls._fd is not None:
            os.write(cls._fd, f"{run}:{step}\n".encode())

    @staticmethod
    def count(path: str | os.PathLike[str]) -> tuple[int, int]:
        """(executions, distinct steps) in a log."""
        try:
            lines = Path(path).read_text().splitlines()
        except FileNotFoundError:
            return 0, 0
        return len(lines), len(set(lines))


class Unsupported(Exception):
    """The system cannot do this workload (the reason is the message)."""


class System:
    """What every benchmarked system implements. All sizes come from the driver."""

    name: ClassVar[str]
    backends: ClassVar[tuple[str, ...]] = ("sqlite", "postgres")
    # What each run of the system's worker is configured with, recorded in the JSON.
    notes: ClassVar[str] = ""

    def __init__(self, backend: str, db: str, workdir: Path, options: dict[str, Any]) -> None:
        self.backend = backend
        self.db = db  # a SQLite file path, a PostgreSQL URL, or the Temporal server's address
        self.workdir = workdir
        self.options = options

    async def __aenter__(self) -> System:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    @classmethod
    def unsupported(cls, workload: int, backend: str) -> str | None:
        """Why this system cannot run `workload` on `backend`, or None."""
        return None

    async def sequential(self, steps: int, runs: int) -> list[float]:
        """W1: `runs` runs one after another, each `steps` no-op steps that call `mark()`;
        returns each run's wall time."""
        raise NotImplementedError

    async def throughput(self, runs: int, steps: int) -> float:
        """W2: `runs` runs of `steps` no-op steps started together; seconds until all finished."""
        raise NotImplementedError

    async def fan_out(self, runs: int, latency: float) -> float:
        """W3: `runs` runs, each one step awaiting `fake_llm(latency)`, started together; seconds."""
        raise NotImplementedError

    async def recovery_start(self, runs: int, steps: int, latency: float) -> None:
        """W4, first worker: start `runs` runs (ids rec-0..) of `steps` steps, each step
        `ExecLog.write(run, i)` then `fake_llm(latency)`; keep executing until killed."""
        raise NotImplementedError

    async def recovery_finish(self, runs: int, steps: int, latency: float, timeout: float) -> int:
        """W4, the new worker: finish the runs the killed one left; returns how many succeeded."""
        raise NotImplementedError

    async def park(self, sessions: int) -> float:
        """W5: `sessions` runs that each wait for a message; returns seconds until all are waiting."""
        raise NotImplementedError

    async def wake(self, sessions: int, count: int) -> float:
        """W5: send a message to `count` of the parked sessions; seconds until those runs finish."""
        raise NotImplementedError
