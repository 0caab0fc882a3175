"""Fixtures that start and stop real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


class Workers:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        database_url: str,
        module: str = "chaos_agents:app",
        *,
        path: Path = HERE,
        lease: float = 1.0,
        concurrency: int = 4,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `corral worker`; `env` adds or overrides CORRAL_* settings."""
        env_overrides, env = dict(env or {}), dict(os.environ)
        env.update(
            {
                "PYTHONPATH": os.pathsep.join([str(path), env.get("PYTHONPATH", "")]),
                "PYTHONDONTWRITEBYTECODE": "1",
                "CORRAL_LEASE_SECONDS": str(lease),
                "CORRAL_POLL_MAX": "0.1",
                "CORRAL_DRAIN_GRACE": "2",
            }
        )
        env.update(env_overrides)
        log_path = self.tmp_path / f"worker-{len(self.procs)}.log"
        with open(log_path, "wb") as log:  # the child keeps its own handle
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "corral",
                    "worker",
                    module,
                    "--database-url",
                    database_url,
                    "--concurrency",
                    str(concurrency),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_path,
            )
        proc.log_path = log_path  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return Path(proc.log_path).read_text()  # type: ignore[attr-defined]

    async def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
        """Return once the worker has installed its signal handlers and started working."""
        deadline = time.monotonic() + timeout
        while " ready" not in self.output(proc):
            if proc.poll() is not None:
                raise AssertionError(f"the worker exited with {proc.returncode}:\n{self.output(proc)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker was not ready within {timeout}s:\n{self.output(proc)}")
            await asyncio.sleep(0.02)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    try:
        yield w
    finally:
        w.stop_all()
