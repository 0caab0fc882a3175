"""Real worker processes killed with SIGKILL, paused with SIGSTOP, and restarted with new code."""

from __future__ import annotations

import asyncio
import collections
import signal
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from corral import RunStatus
from helpers import assert_event_order, make_app

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaos_agents

pytestmark = pytest.mark.chaos


async def pause_outside_a_write(proc, database_url: str) -> None:
    """SIGSTOP the process at a moment it holds no SQLite write lock.

    A SQLite file has one writer at a time: a process paused inside a write transaction blocks
    every other process until it continues (a property of SQLite, not of Corral). The test is about
    fencing, so it pauses the worker between its transactions. On PostgreSQL a paused worker may
    hold a run's row for a few seconds, until the server ends its idle transaction (see
    `test_a_worker_frozen_inside_a_transaction_does_not_keep_its_runs_from_others`).
    """
    import sqlite3

    from corral.store.sqlite import sqlite_path

    for _ in range(100):
        proc.send_signal(signal.SIGSTOP)
        if not database_url.startswith("sqlite"):
            return
        conn = sqlite3.connect(sqlite_path(database_url), timeout=0.05, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # paused mid-write: let it finish and try again
            proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.01)
        finally:
            conn.close()
    raise AssertionError("could not pause the worker outside a write transaction")


def lines(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


async def wait_lines(path: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(lines(path)) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not reach {n} lines (has {len(lines(path))})")
        await asyncio.sleep(0.01)


async def test_sigkill_mid_run_resumes_elsewhere_without_repeating_completed_steps(database_url, workers, tmp_path):
    log = tmp_path / "steps.log"
    async with make_app(database_url, [chaos_agents.thirty]) as app:
        run_id = await app.submit("thirty", {"log": str(log), "steps": 30, "delay": 0.05})
        first = workers.start(database_url)
        await wait_lines(log, 10)
        first.send_signal(signal.SIGKILL)
        first.wait()
        completed_at_kill = {s.seq for s in await app.steps(run_id)}
        second = workers.start(database_url)
        result = await app.wait(run_id, timeout=60)

        assert result.ok, result.error
        assert result.output == {"total": sum(range(30))}
        counts = collections.Counter(lines(log))
        assert set(counts) == set(range(30))
        for i, n in counts.items():
            if str(i + 1) in completed_at_kill:
                assert n == 1, f"completed step {i} ran {n} times"
            else:
                assert n <= 2, f"step {i} ran {n} times"
        assert sum(n == 2 for n in counts.values()) <= 1  # at most the one in flight
        run = await app.get_run(run_id)
        assert run.attempt == 2
        events = await app.events(run_id)
        assert_event_order(events)
        progress = [e.data["data"]["done"] for e in events if e.type == "custom"]
        assert progress == list(range(1, 31))  # no custom event lost or repeated across the crash
        started = [e.data["seq"] for e in events if e.type == "step" and e.data["status"] == "completed"]
        assert started == [str(i) for i in range(1, 31)]
        assert second.poll() is None


async def test_a_paused_worker_is_fenced_out_after_another_takes_over(database_url, workers, tmp_path):
    log = tmp_path / "steps.log"
    async with make_app(database_url, [chaos_agents.thirty]) as app:
        run_id = await app.submit("thirty", {"log": str(log), "steps": 20, "delay": 0.1})
        zombie = workers.start(database_url)
        await wait_lines(log, 4)
        await pause_outside_a_write(zombie, database_url)
        paused_with = len(lines(log))
        await asyncio.sleep(1.6)  # past the 1 s lease
        workers.start(database_url)
        await wait_lines(log, paused_with + 4)
        assert (await app.get_run(run_id)).attempt == 2
        zombie.send_signal(signal.SIGCONT)
        result = await app.wait(run_id, timeout=60)
        assert result.ok and result.output == {"total": sum(range(20))}

        deadline = time.monotonic() + 10
        while "abandoned" not in workers.output(zombie) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert "abandoned" in workers.output(zombie), workers.output(zombie)
        journal = await app.steps(run_id)
        taken_over = [s for s in journal if s.attempt == 2]
        assert taken_over and all(int(s.seq) > paused_with - 1 for s in taken_over)
        assert all(s.attempt in (1, 2) for s in journal) and len(journal) == 20
        run = await app.get_run(run_id)
        assert run.status is RunStatus.SUCCEEDED and run.attempt == 2
        assert_event_order(await app.events(run_id))


async def test_a_worker_frozen_inside_a_transaction_does_not_keep_its_runs_from_others(postgres_url, workers, tmp_path):
    """PostgreSQL: a worker stopped between a statement and its COMMIT holds its run's row, which
    a claim skips. The server ends such a transaction, so the run is reclaimed all the same."""
    import psycopg

    from corral.store.postgres import parse_url

    name = f"frozen_{uuid.uuid4().hex[:8]}"
    admin = await psycopg.AsyncConnection.connect(parse_url(postgres_url).conninfo, autocommit=True)
    async with admin, make_app(postgres_url, [chaos_agents.thirty]) as app:
        # Short runs: each one's finish is a transaction of several statements (the run, then its
        # session's values), the window the worker is frozen in.
        log = str(tmp_path / "steps.log")
        run_ids = [await app.submit("thirty", {"log": log, "steps": 2, "delay": 0.005}) for _ in range(400)]
        zombie = workers.start(f"{postgres_url}&application_name={name}")
        await workers.wait_ready(zombie)
        for _ in range(3000):  # stop it until it is caught holding a transaction open (not just BEGIN)
            zombie.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.03)  # the server finishes the statement the worker sent
            cur = await admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s"
                " AND state = 'idle in transaction' AND query <> 'BEGIN'",
                (name,),
            )
            if await cur.fetchone():
                break
            zombie.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the worker was never caught inside a transaction")
        runs = {rid: await app.get_run(rid) for rid in run_ids}
        # Caught in a finish, the run is running under the zombie's lease; caught in a claim, the
        # rows it locked are still queued. Either way every run must finish without the zombie.
        held = {rid: run.attempt for rid, run in runs.items() if run.status is RunStatus.RUNNING}
        workers.start(postgres_url)  # the zombie stays frozen: everything left is this worker's to do
        deadline = time.monotonic() + 60
        while left := [rid for rid in run_ids if not (await app.get_run(rid)).status.terminal]:
            assert time.monotonic() < deadline, (
                f"{len(left)} runs never finished, of them held: {set(left) & set(held)}"
            )
            await asyncio.sleep(0.1)
        for rid, attempt in held.items():
            run = await app.get_run(rid)
            assert run.status is RunStatus.SUCCEEDED and run.attempt > attempt, (run.status, run.attempt, attempt)


AGENT_SOURCE = """
import asyncio
from corral import App, Context, agent


async def append_line(path: str, i: int) -> int:
    await asyncio.sleep(0.05)
    with open(path, "a") as f:
        f.write(f"{{i}}\\n")
    return i


@agent(name="evolving")
async def evolving(ctx: Context, input: dict) -> int:
    for i in range(30):
        await ctx.step("{step}", append_line, input["log"], i)
    return 30


app = App(agents=[evolving])
"""


async def test_changed_code_between_crash_and_resume_raises_nondeterminism(database_url, workers, tmp_path):
    module_dir = tmp_path / "code"
    module_dir.mkdir()
    module = module_dir / "evolving_agents.py"
    module.write_text(textwrap.dedent(AGENT_SOURCE.format(step="append")))
    log = tmp_path / "steps.log"
    sys.path.insert(0, str(module_dir))
    try:
        import evolving_agents
    finally:
        sys.path.remove(str(module_dir))
    async with make_app(database_url, [evolving_agents.evolving]) as app:
        run_id = await app.submit("evolving", {"log": str(log)})
        first = workers.start(database_url, "evolving_agents:app", path=module_dir)
        await wait_lines(log, 5)
        first.send_signal(signal.SIGKILL)
        first.wait()
        module.write_text(textwrap.dedent(AGENT_SOURCE.format(step="append_renamed")))
        workers.start(database_url, "evolving_agents:app", path=module_dir)
        result = await app.wait(run_id, timeout=60)
        assert result.status is RunStatus.FAILED
        assert result.error["type"] == "NonDeterminismError"
        assert result.error["step"] == "#1 step:append_renamed"
        assert result.error["recorded"]["name"] == "append"


async def test_agent_with_two_tools_resumes_between_tool_calls_without_repeating_one(database_url, workers, tmp_path):
    log = tmp_path / "tools.log"
    async with make_app(database_url, [chaos_agents.refunds], models=chaos_agents.app.models) as app:
        run_id = await app.submit("refunds", {"log": str(log), "message": "Refund order A please"})
        first = workers.start(database_url)
        deadline = time.monotonic() + 30
        while "fetch B" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # the refund tool is now in flight (it takes 1.5 s)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert "refund" not in log.read_text()
        workers.start(database_url)
        result = await app.wait(run_id, timeout=60)
        assert result.ok, result.error
        assert result.output["answer"] == "Refunded 40 on order A; order B needed nothing."
        calls = log.read_text().splitlines()
        assert sorted(calls) == ["fetch A", "fetch B", "refund A 40"]  # nothing ran twice
        kinds = [(s.kind.value, s.name, s.attempt) for s in await app.steps(run_id)]
        assert ("tool", "refund", 2) in kinds and ("tool", "fetch_order", 1) in kinds


async def test_a_killed_worker_s_runs_resume_on_this_host_without_waiting_for_the_lease(
    database_url, workers, tmp_path
):
    log = tmp_path / "steps.log"
    async with make_app(database_url, [chaos_agents.thirty]) as app:
        run_id = await app.submit("thirty", {"log": str(log), "steps": 30, "delay": 0.05})
        first = workers.start(database_url, lease=60.0)
        await wait_lines(log, 5)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = time.monotonic()
        workers.start(database_url, lease=60.0)
        result = await app.wait(run_id, timeout=50)
        assert result.ok
        assert time.monotonic() - killed_at < 30  # a 60 s lease would have kept it waiting
        assert (await app.get_run(run_id)).attempt == 2
        counts = collections.Counter(lines(log))
        assert set(counts) == set(range(30)) and sum(n == 2 for n in counts.values()) <= 1
