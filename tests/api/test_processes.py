"""`corral serve` and `corral keys create` as real processes: an API process killed in the middle of
a streamed run, and the unmodified client reconnecting (Last-Event-ID) to the next API process,
which serves exactly the events it missed. Runs execute in a separate `corral worker`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client

from helpers import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.api.api_agents:app"

pytestmark = pytest.mark.chaos


def corral(*args: str, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    with out.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "corral", *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env
        )


def wait_ok(url: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the API process exited"
        try:
            if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


async def test_killed_api_process_stream_continues_on_the_next(tmp_path):
    db = f"sqlite:///{tmp_path / 'corral.db'}"
    log = tmp_path / "out.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = subprocess.run(
        [
            sys.executable,
            "-m",
            "corral",
            "keys",
            "create",
            "--tenant",
            "t1",
            "--principal",
            "p1",
            "--roles",
            "a,b",
            "--database-url",
            db,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert key.startswith("crl_")
    worker = corral("worker", APP, "--database-url", db, out=log)
    first = corral("serve", APP, "--port", str(port), "--no-worker", "--dev", "--database-url", db, out=log)
    second = None
    try:
        wait_ok(url, first)
        deadline = time.monotonic() + 10
        while not re.search(r"API key \(shown once, keep it\): (crl_\S+)", log.read_text()):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        dev_key = re.search(r"API key \(shown once, keep it\): (crl_\S+)", log.read_text()).group(1)
        assert "langgraph_sdk" in log.read_text() and "curl" in log.read_text()
        async with get_client(url=url, api_key=dev_key) as dev:
            assert len(await dev.assistants.search()) == 5

        async with get_client(url=url, api_key=key) as client:
            thread = await client.threads.create()
            parts = []
            stream = client.runs.stream(
                thread["thread_id"], "slow", input={"steps": 30, "delay": 0.1}, stream_mode=["custom", "values"]
            )
            async for part in stream:
                parts.append(part)
                if part.event == "custom" and part.data["data"]["i"] == 4:
                    first.kill()  # SIGKILL: the open stream is cut
                    first.wait()
                    second = corral("serve", APP, "--port", str(port), "--no-worker", "--database-url", db, out=log)
            ticks = [p.data["data"]["i"] for p in parts if p.event == "custom"]
            assert ticks == list(range(30))  # nothing lost, nothing twice
            ids = [int(p.id) for p in parts]
            assert ids == sorted(set(ids))
            assert parts[0].event == "metadata" and parts[-1].event == "end"
            assert parts[-2].data["messages"][-1]["content"] == "took 30 steps"
            whole = [p async for p in client.runs.join_stream(thread["thread_id"], parts[0].data["run_id"])]
            assert [(p.id, p.event, p.data) for p in whole] == [(p.id, p.event, p.data) for p in parts]
    finally:
        for proc in (first, second, worker):
            if proc is not None:
                stop_process(proc)
