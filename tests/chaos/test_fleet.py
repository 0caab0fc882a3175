"""A fleet of real `corral worker` processes under a steady workload: workers killed with SIGKILL
and restarted, every PostgreSQL connection terminated, a rolling deploy. Each test checks the
engine's contract run by run: every run succeeds, and no step journaled as completed ran again.

The agent (`fleet_agents.fleet`) appends `"{run}:{i}:{attempt}"` to one shared log when the body
of step i finishes, so the log says how often each body ran and in which attempt; the journal says
which attempt completed each step.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral import App, RunStatus
from corral.store.base import StepStatus
from helpers import make_app

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fleet_agents

pytestmark = pytest.mark.chaos

RUNS = 500
STEPS = 10
SLOTS = 4  # per worker: 12 runs at a time, so the workload outlasts several kills
MODULE = "fleet_agents:app"


async def submit(app: App, log: Path, runs: int = RUNS) -> dict[str, int]:
    """Queue `runs` runs of the fleet agent; returns each run's seed by run id."""
    seeds: dict[str, int] = {}
    for start in range(0, runs, 100):  # concurrently, so the store commits them in groups
        batch = range(start, min(start + 100, runs))
        ids = await asyncio.gather(
            *(app.submit("fleet", {"seed": seed, "steps": STEPS, "log": str(log)}) for seed in batch)
        )
        seeds.update(zip(ids, batch, strict=True))
    return seeds


async def unfinished(app: App) -> int:
    stats = await app.store.stats(time.time())
    return int(stats["queued"] + stats["running"] + stats["waiting"])


@dataclass
class Audit:
    resumed: int  # runs that more than one attempt worked on
    repeated: int  # step bodies that ran again because their attempt died with them in flight
    longest_handover: float  # seconds between one attempt's last step and the next one's first


async def audit(app: App, seeds: dict[str, int], log: Path) -> Audit:
    """Every run succeeded with the right output and a complete journal; the attempt that
    journaled a step ran its body exactly once; any other run of that body was by an earlier
    attempt that died with it in flight (at most one per attempt: the agent is sequential)."""
    executions: dict[tuple[str, int], list[int]] = defaultdict(list)
    for line in log.read_text().splitlines():
        run_id, i, attempt = line.rsplit(":", 2)
        executions[run_id, int(i)].append(int(attempt))
    resumed = repeated = 0
    longest_handover = 0.0
    for run_id, seed in seeds.items():
        run = await app.get_run(run_id)
        assert run.status is RunStatus.SUCCEEDED, (run_id, run.status, run.error)
        assert run.output == {"seed": seed, "total": sum(range(STEPS))}
        assert run.lease_owner is None and run.lease_expires_at is None
        journal = sorted(await app.steps(run_id), key=lambda s: int(s.seq))
        assert [s.seq for s in journal] == [str(i + 1) for i in range(STEPS)], run_id
        died_in_flight: list[int] = []
        for i, step in enumerate(journal):
            assert step.status is StepStatus.COMPLETED and step.result_json == str(i)
            ran = executions.pop((run_id, i), [])
            assert ran.count(step.attempt) == 1, f"run {run_id} step {i}: journaled by {step.attempt}, ran in {ran}"
            earlier = [a for a in ran if a != step.attempt]
            assert all(a < step.attempt for a in earlier), f"run {run_id} step {i} ran again after completing: {ran}"
            died_in_flight += earlier
        assert len(died_in_flight) == len(set(died_in_flight)), f"run {run_id}: {died_in_flight}"
        for prev, step in itertools.pairwise(journal):
            if step.attempt != prev.attempt:
                assert prev.finished_at is not None
                longest_handover = max(longest_handover, step.started_at - prev.finished_at)
        resumed += len({s.attempt for s in journal}) > 1
        repeated += len(died_in_flight)
    assert not executions, f"bodies ran for steps no journal holds: {sorted(executions)[:5]}"
    return Audit(resumed, repeated, round(longest_handover, 3))


async def finish(app: App, deadline: float, what: str) -> float:
    """Wait until nothing is queued, running or waiting; returns when that was first seen."""
    while left := await unfinished(app):
        assert time.monotonic() < deadline, f"{left} runs unfinished: {what}"
        await asyncio.sleep(0.1)
    return time.monotonic()


def assert_clean(workers, procs) -> None:
    for proc in procs:
        out = workers.output(proc)
        assert "Traceback" not in out and "runner failed" not in out, out[-4000:]


# 1. SIGKILL ------------------------------------------------------------------------------------
KILL_LEASE = 1.5


async def test_fleet_survives_a_worker_killed_every_few_seconds(database_url, workers, tmp_path):
    log = tmp_path / "steps.log"
    rng = random.Random(3)
    async with make_app(database_url, [fleet_agents.fleet]) as app:
        seeds = await submit(app, log)

        def start():
            return workers.start(database_url, MODULE, lease=KILL_LEASE, concurrency=SLOTS)

        fleet = [start() for _ in range(3)]
        started = time.monotonic()
        deadline = started + 120
        kills, next_kill = 0, started + rng.uniform(1.5, 3.0)
        while left := await unfinished(app):
            assert time.monotonic() < deadline, f"{left} runs unfinished after {kills} kills"
            if time.monotonic() >= next_kill:
                k = rng.randrange(len(fleet))
                fleet[k].send_signal(signal.SIGKILL)
                fleet[k].wait()
                fleet[k] = start()
                kills += 1
                next_kill = time.monotonic() + rng.uniform(1.5, 3.0)
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started

        # Nothing is left running under a lease that nobody renews any more.
        assert not await app.store.list_runs(status=RunStatus.RUNNING, limit=RUNS)
        result = await audit(app, seeds, log)
        assert kills >= 3, f"only {kills} kills in {elapsed:.1f}s: the test proved little"
        assert result.resumed > 0  # the kills hit runs in flight, which other workers resumed
        assert all(p.poll() is None for p in fleet)
        assert_clean(workers, workers.procs)
        print(f"{RUNS} runs in {elapsed:.1f}s, {kills} kills, {result}")


# 2. PostgreSQL connections terminated ---------------------------------------------------------
async def terminate(admin, prefix: str) -> int:
    cur = await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
        (prefix + "%",),
    )
    return sum(1 for (ok,) in await cur.fetchall() if ok)


async def connected(admin, prefix: str) -> set[str]:
    cur = await admin.execute(
        "SELECT DISTINCT application_name FROM pg_stat_activity WHERE application_name LIKE %s", (prefix + "%",)
    )
    return {name for (name,) in await cur.fetchall()}


async def test_fleet_survives_every_postgres_connection_terminated(postgres_url, workers, tmp_path):
    import psycopg

    from corral.store.postgres import parse_url

    log = tmp_path / "steps.log"
    prefix = f"fleet_{uuid.uuid4().hex[:8]}_"
    names = [f"{prefix}{k}" for k in range(3)]
    admin = await psycopg.AsyncConnection.connect(
        parse_url(postgres_url).conninfo, autocommit=True, application_name="fleet_admin"
    )
    async with admin, make_app(postgres_url, [fleet_agents.fleet]) as app:
        seeds = await submit(app, log)
        fleet = [
            workers.start(f"{postgres_url}&application_name={name}", MODULE, lease=2.0, concurrency=SLOTS)
            for name in names
        ]
        deadline = time.monotonic() + 120
        while await unfinished(app) > RUNS * 0.8:  # in the middle of the workload
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        killed, rounds = 0, 0
        storm_ends = time.monotonic() + 3.0
        while time.monotonic() < storm_ends:
            killed += await terminate(admin, prefix)
            rounds += 1
            await asyncio.sleep(0.3)
        assert await unfinished(app) > 0, "the workload ended during the storm: the test proved little"
        await finish(app, deadline, f"after {killed} connections were terminated")

        assert killed >= rounds >= 5, (killed, rounds)
        result = await audit(app, seeds, log)
        assert all(p.poll() is None for p in fleet)
        while await connected(admin, prefix) != set(names):  # each worker is connected again
            assert time.monotonic() < deadline, await connected(admin, prefix)
            await asyncio.sleep(0.1)
        assert_clean(workers, fleet)
        print(f"{RUNS} runs, {killed} connections terminated in {rounds} rounds, {result}")


# 3. Rolling deploy ------------------------------------------------------------------------------
# Renewed every 30 s, so a lease a drained worker left behind would block its run for 60 s or more.
DEPLOY_LEASE = 90.0
DRAIN_GRACE = 10.0


async def test_rolling_deploy_moves_runs_over_without_waiting_for_leases(database_url, workers, tmp_path):
    log = tmp_path / "steps.log"
    env = {"CORRAL_DRAIN_GRACE": str(DRAIN_GRACE)}
    async with make_app(database_url, [fleet_agents.fleet]) as app:
        seeds = await submit(app, log)

        async def start():
            proc = workers.start(database_url, MODULE, lease=DEPLOY_LEASE, concurrency=SLOTS, env=env)
            await workers.wait_ready(proc)
            return proc

        old = [await start() for _ in range(3)]
        deadline = time.monotonic() + 120
        while await unfinished(app) > RUNS * 0.9:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        new, drains = [], []
        for proc in old:
            new.append(await start())
            assert await unfinished(app) > 0, "the workload ended during the deploy: the test proved little"
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            while proc.poll() is None:
                assert time.monotonic() - sent < DRAIN_GRACE, f"no exit within the drain grace:\n{workers.output(proc)}"
                await asyncio.sleep(0.02)
            drains.append(round(time.monotonic() - sent, 2))
            assert proc.returncode == 0, workers.output(proc)
            assert "draining" in workers.output(proc)  # it held runs when told to stop
        last_sigterm = time.monotonic()
        limit = last_sigterm + DEPLOY_LEASE / 2
        done = await finish(app, min(deadline, limit), f"{DEPLOY_LEASE / 2:.0f}s after the last SIGTERM")

        # Had any run waited for a drained worker's lease, it could not have finished this soon.
        assert done < limit, f"finished {done - last_sigterm:.1f}s after the last SIGTERM"
        result = await audit(app, seeds, log)
        assert result.resumed > 0  # runs did move from the drained workers to others
        assert result.longest_handover < DEPLOY_LEASE / 3, result  # released, not left to expire
        assert result.repeated == 0  # a drain lets in-flight steps finish: nothing ran twice
        assert all(p.poll() is None for p in new)
        assert_clean(workers, old + new)
        print(f"{RUNS} runs, drains took {drains}s, done {done - last_sigterm:.1f}s after the last SIGTERM, {result}")
