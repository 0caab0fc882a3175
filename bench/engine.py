"""Engine benchmark: per-step overhead, throughput and submit-to-first-step latency on each store.

    python bench/engine.py [--backend sqlite|postgres|all] [--repeat N] [--quick]
                           [--database-url URL] [--metrics seq,throughput,latency,procs]
                           [--sqlite-synchronous NORMAL|FULL|OFF] [--profile] [--no-write]

Every step is a no-op async function, so what is measured is Corral itself: journal writes,
events, fencing, claims, the event loop and the store's commit path.

- seq: runs of 50 sequential `ctx.step("noop", noop, i)` calls through `app.run()` (distinct
  arguments: 5 identical steps in a row trip loop detection). Each step is timed from the agent's
  side (p50, p99, mean); each run's wall time (submit to outcome) is divided by its steps.
- throughput: 100 runs x 20 steps submitted at once to an idle in-process `Worker` (concurrency
  100), in several rounds: steps per second from the first submit to the last `finished_at` in
  the store (median round). Then 1,000 runs queued at once, for the steady state.
- latency: one run at a time submitted to an idle, waiting worker; the time from `app.submit()`
  returning to the first step's body executing (wall clock, so it also works across processes).
- procs (PostgreSQL only): the throughput workload with 1, 2 and 4 worker processes sharing the
  database, and the latency workload with the worker in another process.

CPU per step (process time of this process, all threads, divided by steps) is printed beside the
wall-clock figures: on a shared, noisy machine it moves less than they do.

Each repetition runs on a fresh database: SQLite in a temporary directory, PostgreSQL in a fresh
schema of the given database (`?schema=...`, dropped afterwards). The PostgreSQL URL comes from
--database-url or CORRAL_TEST_POSTGRES_URL and is never written down. Results are the median, min
and max over repetitions, printed as a table and written to bench/results/engine-<backend>.json.
`--profile` runs the SQLite workloads once under cProfile (the event loop thread and the store's
database thread) and prints where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import io
import logging
import multiprocessing
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from _common import BENCH_DIR, Metric, machine_info, percentile, print_table, write_results

import corral
from corral import App, Context, Limits, Settings, agent
from corral.agent import AgentFunction

# Targets from the brief, and peer figures from shared/REFERENCES.md (2 cores, medians).
TARGETS = {
    "sqlite": {"step_p50_ms": "<= 0.5", "throughput_steps_s": ">= 2000"},
    "postgres": {
        "step_p50_ms": "<= 1.5",
        "throughput_steps_s": ">= 1500",
        "latency_p50_ms": "< 20",
        "latency_proc_p50_ms": "< 20",
    },
}
PEERS = {
    "sqlite": {
        "run_wall_per_step_ms": "DBOS 1.93, LangGraph 1.23",
        "throughput_steps_s": "DBOS 359, LangGraph 469",
    },
    "postgres": {
        "run_wall_per_step_ms": "DBOS 3.66, LangGraph 1.54",
        "throughput_steps_s": "DBOS 370, LangGraph 746",
    },
}
WORKLOAD_TIMEOUT = 600.0


@dataclass(frozen=True)
class Workload:
    seq_steps: int = 50
    seq_runs: int = 20  # measured runs per repetition (after one warm-up run)
    conc_runs: int = 100
    conc_steps: int = 20
    conc_rounds: int = 5  # rounds per repetition (one round lasts ~0.1 s on SQLite: take the median)
    sustained_runs: int = 1000  # the same, 1,000 runs queued at once: the steady state, not a burst
    concurrency: int = 100
    latency_samples: int = 50
    procs: tuple[int, ...] = (1, 2, 4)
    sqlite_synchronous: str = "NORMAL"  # Corral's default; FULL also survives power loss

    @classmethod
    def quick(cls) -> Workload:
        return cls(seq_runs=5, conc_rounds=2, sustained_runs=300, latency_samples=15, procs=(1, 2))


# --- the agents ------------------------------------------------------------------------------
# Agent-side step timings, keyed by run id (in-process workloads only).
_STEP_SAMPLES: dict[str, list[float]] = {}


async def noop(i: int) -> int:
    return i


async def stamp() -> float:
    return time.time()


def build_agents(tag: str) -> dict[str, AgentFunction]:
    """The benchmark's agents, named with `tag` so a shared database never mixes invocations."""
    limits = Limits(max_steps=10_000)

    async def sequential(ctx: Context, n: int) -> int:
        samples = _STEP_SAMPLES.setdefault(ctx.run_id, [])
        for i in range(n):
            t0 = time.perf_counter()
            await ctx.step("noop", noop, i)  # distinct arguments: identical ones trip loop detection
            samples.append(time.perf_counter() - t0)
        return n

    async def concurrent(ctx: Context, n: int) -> int:
        for i in range(n):
            await ctx.step("noop", noop, i)
        return n

    async def probe(ctx: Context, _: Any) -> float:
        return await ctx.step("first", stamp)

    fns = {"seq": sequential, "conc": concurrent, "probe": probe}
    return {k: agent(fn, name=f"bench_{k}_{tag}", limits=limits) for k, fn in fns.items()}


def make_app(url: str, tag: str, wl: Workload, concurrency: int = 10) -> tuple[App, dict[str, str]]:
    agents = build_agents(tag)
    # Explicit settings: CORRAL_* variables in the environment must not change the benchmark.
    settings = Settings(database_url=url, concurrency=concurrency, sqlite_synchronous=wl.sqlite_synchronous)
    return App(agents.values(), settings=settings), {k: a.name for k, a in agents.items()}


# --- helpers ---------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def running_worker(app: App, concurrency: int) -> AsyncIterator[Any]:
    worker = app.worker(concurrency)
    task = asyncio.create_task(worker.run(), name="bench-worker")
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout}s")
        await asyncio.sleep(interval)


async def wait_terminal(app: App, ids: list[str], timeout: float, interval: float = 0.02) -> list[Any]:
    """Wait until every run in `ids` has ended (runs executed in other processes), then read them.

    The database holds only this benchmark's runs, so the store's cheap count of active runs
    says when; reading the runs themselves on every poll would take CPU from the workers."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await app.store.stats(time.time())
        if not (counts["queued"] or counts["running"] or counts["waiting"]):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs not done within {timeout}s")
        await asyncio.sleep(interval)
    wanted = set(ids)
    seen = {r.id: r for r in await app.store.list_runs(limit=len(ids) + 64) if r.id in wanted}
    for rid in wanted - seen.keys():
        seen[rid] = await app.store.get_run(rid)
    return [seen[i] for i in ids]


def check_ok(records: list[Any]) -> None:
    bad = [r for r in records if r.status.value != "succeeded"]
    if bad:
        r = bad[0]
        raise RuntimeError(f"{len(bad)} run(s) did not succeed; first: {r.status.value} {r.error}")


def commit_stats(app: App) -> tuple[int, int] | None:
    stats = getattr(app.store, "commit_stats", None)
    return tuple(stats) if stats is not None else None


# --- workloads (one repetition each) ---------------------------------------------------------
async def seq_workload(url: str, tag: str, wl: Workload) -> dict[str, float]:
    app, names = make_app(url, tag, wl)
    async with app:
        warm = await app.run(names["seq"], wl.seq_steps)
        check_ok([warm])
        _STEP_SAMPLES.pop(warm.run_id, None)
        samples: list[float] = []
        per_step: list[float] = []
        cpu0 = time.process_time()
        for _ in range(wl.seq_runs):
            t0 = time.perf_counter()
            result = await app.run(names["seq"], wl.seq_steps)
            wall = time.perf_counter() - t0
            check_ok([result])
            samples.extend(_STEP_SAMPLES.pop(result.run_id))
            per_step.append(wall / wl.seq_steps)
        cpu = time.process_time() - cpu0
    return {
        "step_p50_ms": percentile(samples, 50) * 1e3,
        "step_p99_ms": percentile(samples, 99) * 1e3,
        "step_mean_ms": statistics.fmean(samples) * 1e3,
        "run_wall_per_step_ms": statistics.median(per_step) * 1e3,
        "seq_cpu_per_step_us": cpu / (wl.seq_runs * wl.seq_steps) * 1e6,
    }


async def throughput_round(
    app: App, name: str, runs: int, steps: int, done: Callable[[list[str]], Any]
) -> dict[str, float]:
    """Submit `runs` runs at once; steps/s from the first submit to the last `finished_at`."""
    cpu0, t0 = time.process_time(), time.time()
    ids = list(await asyncio.gather(*(app.submit(name, steps) for _ in range(runs))))
    submitted = time.time()
    records = await done(ids)
    cpu = time.process_time() - cpu0  # includes a little polling after the last run ended
    check_ok(records)
    wall = max(r.finished_at for r in records) - t0
    return {
        "steps_s": runs * steps / wall,
        "runs_s": runs / wall,
        "submit_ms": (submitted - t0) * 1e3,
        "cpu_per_step_us": cpu / (runs * steps) * 1e6,
    }


async def throughput_workload(url: str, tag: str, wl: Workload) -> dict[str, float]:
    app, names = make_app(url, tag, wl, wl.concurrency)
    async with app, running_worker(app, wl.concurrency) as worker:
        after: tuple[int, int] | None = None

        async def done(ids: list[str]) -> list[Any]:
            nonlocal after
            target = base + len(ids)
            await wait_until(lambda: worker.completed >= target, WORKLOAD_TIMEOUT, 0.01)
            after = commit_stats(app)  # before our own reads below
            return await wait_terminal(app, ids, 60)

        base = worker.completed
        await throughput_round(app, names["conc"], 20, 2, done)  # warm-up
        rounds: list[dict[str, float]] = []
        stats: list[tuple[int, int]] = []
        for _ in range(wl.conc_rounds):
            await asyncio.sleep(0.05)  # the worker is idle and waiting
            base = worker.completed
            before = commit_stats(app)
            rounds.append(await throughput_round(app, names["conc"], wl.conc_runs, wl.conc_steps, done))
            if before is not None and after is not None:
                stats.append((after[0] - before[0], after[1] - before[1]))
        out = {
            "throughput_steps_s": statistics.median(r["steps_s"] for r in rounds),
            "throughput_runs_s": statistics.median(r["runs_s"] for r in rounds),
            "submit_ms": statistics.median(r["submit_ms"] for r in rounds),
            "cpu_per_step_us": statistics.median(r["cpu_per_step_us"] for r in rounds),
        }
        if stats:
            out["commits"] = statistics.median(float(t) for t, _ in stats)
            out["ops_per_commit"] = sum(o for _, o in stats) / max(1, sum(t for t, _ in stats))
        if wl.sustained_runs:
            await asyncio.sleep(0.05)
            base = worker.completed
            r = await throughput_round(app, names["conc"], wl.sustained_runs, wl.conc_steps, done)
            out["sustained_steps_s"] = r["steps_s"]
            out["sustained_cpu_per_step_us"] = r["cpu_per_step_us"]
    return out


async def latency_samples(app: App, name: str, n: int, done: Callable[[str], Any]) -> list[float]:
    out = []
    for i in range(n + 2):  # two warm-up samples
        await asyncio.sleep(random.uniform(0.03, 0.08))  # let the worker go idle and wait
        rid = await app.submit(name)
        submitted = time.time()
        record = await done(rid)
        check_ok([record])
        if i >= 2:
            out.append(record.output - submitted)
    return out


async def latency_workload(url: str, tag: str, wl: Workload) -> dict[str, float]:
    app, names = make_app(url, tag, wl)
    async with app, running_worker(app, 10) as worker:
        await asyncio.sleep(0.1)

        async def done(rid: str) -> Any:
            target = worker.completed + 1
            await wait_until(lambda: worker.completed >= target, 60)
            return await app.get_run(rid)

        samples = await latency_samples(app, names["probe"], wl.latency_samples, done)
    return {"latency_p50_ms": percentile(samples, 50) * 1e3, "latency_p99_ms": percentile(samples, 99) * 1e3}


# --- worker processes (PostgreSQL) -----------------------------------------------------------
def _process_worker(url: str, tag: str, wl: Workload, ready: Any, stop: Any, results: Any) -> None:
    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        concurrency = wl.concurrency
        app, _ = make_app(url, tag, wl, concurrency)
        async with app, running_worker(app, concurrency) as worker:
            ready.set()
            await asyncio.to_thread(stop.wait)
            completed = worker.completed
        results.put(completed)

    asyncio.run(main())


@contextlib.asynccontextmanager
async def worker_processes(url: str, tag: str, count: int, wl: Workload) -> AsyncIterator[list[int]]:
    """`count` worker processes, started and idle; yields a list that receives their run counts."""
    mp = multiprocessing.get_context("spawn")
    stop, results = mp.Event(), mp.Queue()
    readies = [mp.Event() for _ in range(count)]
    procs = [mp.Process(target=_process_worker, args=(url, tag, wl, r, stop, results), daemon=True) for r in readies]
    for p in procs:
        p.start()
    completed: list[int] = []
    try:
        for r, p in zip(readies, procs, strict=True):
            if not await asyncio.to_thread(r.wait, 60):
                raise RuntimeError(f"worker process {p.pid} did not start (exit code {p.exitcode})")
        await asyncio.sleep(0.5)  # connections open, workers idle
        yield completed
    finally:
        stop.set()
        for p in procs:
            await asyncio.to_thread(p.join, 30)
            if p.is_alive():
                p.terminate()
                p.join(5)
        while not results.empty():
            completed.append(results.get_nowait())


async def procs_workload(url: str, tag: str, wl: Workload, repeat: int) -> dict[str, list[float]]:
    """Throughput with 1, 2, 4 worker processes; latency with one worker process. Each process set
    is started once; its rounds are the repetitions (after a warm-up round)."""
    out: dict[str, list[float]] = {}
    app, names = make_app(url, tag, wl)
    async with app:

        async def done(ids: list[str]) -> list[Any]:
            return await wait_terminal(app, ids, WORKLOAD_TIMEOUT)

        for count in wl.procs:
            async with worker_processes(url, tag, count, wl) as completed:
                await throughput_round(app, names["conc"], 20, 2, done)  # warm-up
                for _ in range(repeat):
                    rounds = [
                        await throughput_round(app, names["conc"], wl.conc_runs, wl.conc_steps, done)
                        for _ in range(wl.conc_rounds)
                    ]
                    out.setdefault(f"throughput_{count}proc_steps_s", []).append(
                        statistics.median(r["steps_s"] for r in rounds)
                    )
                if count == 1:

                    async def done_one(rid: str) -> Any:
                        return (await wait_terminal(app, [rid], 60, interval=0.005))[0]

                    for _ in range(repeat):
                        s = await latency_samples(app, names["probe"], wl.latency_samples, done_one)
                        out.setdefault("latency_proc_p50_ms", []).append(percentile(s, 50) * 1e3)
                        out.setdefault("latency_proc_p99_ms", []).append(percentile(s, 99) * 1e3)
            print(f"  {count} worker process(es): runs per process {sorted(completed)}", flush=True)
    return out


# --- backends --------------------------------------------------------------------------------
@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        yield f"sqlite:///{os.path.join(tmp, 'corral.db')}"


_PG_OPTIONS = ("schema", "pool_min_size", "pool_max_size")  # Corral's, not libpq's


@contextlib.asynccontextmanager
async def postgres_database(url: str) -> AsyncIterator[str]:
    """A fresh schema in the given database (the store creates it), dropped afterwards. A URL that
    names its own schema is used as it is: keep that schema empty, since the process workloads
    judge completion by the count of active runs."""
    # Plain string work: urlunsplit would turn "postgresql:///db" (a Unix socket) into "postgresql:/db".
    base, _, query_text = url.partition("?")
    query = parse_qsl(query_text, keep_blank_values=True)
    if any(k == "schema" for k, _ in query):
        yield url
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{base}?{urlencode([*query, ('schema', schema)])}"
    finally:
        libpq_query = urlencode([(k, v) for k, v in query if k not in _PG_OPTIONS])
        await asyncio.to_thread(_drop_schema, f"{base}?{libpq_query}" if libpq_query else base, schema)


def _drop_schema(libpq_url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(libpq_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    except psycopg.Error as exc:
        print(f"  could not drop schema {schema}: {exc}", file=sys.stderr)


@contextlib.asynccontextmanager
async def fresh_database(backend: str, url: str | None) -> AsyncIterator[str]:
    if backend == "sqlite":
        with sqlite_database() as db_url:
            yield db_url
    else:
        async with postgres_database(url or "") as db_url:
            yield db_url


async def postgres_unavailable(url: str | None) -> str | None:
    """Why PostgreSQL cannot be benchmarked, or None when it can."""
    if not url:
        return "no database URL (set CORRAL_TEST_POSTGRES_URL or pass --database-url)"
    try:
        import corral.store.postgres  # noqa: F401
    except ImportError as exc:
        return f"corral.store.postgres does not import: {exc}"
    try:
        async with postgres_database(url) as db_url:
            app, _ = make_app(db_url, "probe", Workload())
            try:
                await asyncio.wait_for(app.open(), 30)
            finally:
                with contextlib.suppress(Exception):
                    await app.close()
    except Exception as exc:
        return f"cannot open the store: {type(exc).__name__}: {exc}"
    return None


METRICS: dict[str, tuple[str, str, bool]] = {
    # key: (label, unit, higher is better)
    "step_p50_ms": ("step p50, agent side", "ms", False),
    "step_p99_ms": ("step p99, agent side", "ms", False),
    "step_mean_ms": ("step mean, agent side", "ms", False),
    "run_wall_per_step_ms": ("run wall / steps (50-step run)", "ms", False),
    "seq_cpu_per_step_us": ("  CPU per step (this process, all threads)", "us", False),
    "throughput_steps_s": ("throughput, {conc_runs} runs x {conc_steps} steps, c={concurrency}", "steps/s", True),
    "throughput_runs_s": ("  same, runs", "runs/s", True),
    "cpu_per_step_us": ("  CPU per step (this process, all threads)", "us", False),
    "submit_ms": ("  time to submit the {conc_runs} runs", "ms", False),
    "commits": ("  SQLite transactions in the round", "count", False),
    "ops_per_commit": ("  store operations per transaction", "ops", True),
    "sustained_steps_s": ("throughput, {sustained_runs} runs x {conc_steps} steps, c={concurrency}", "steps/s", True),
    "sustained_cpu_per_step_us": ("  CPU per step (this process, all threads)", "us", False),
    "throughput_1proc_steps_s": ("throughput, 1 worker process", "steps/s", True),
    "throughput_2proc_steps_s": ("throughput, 2 worker processes", "steps/s", True),
    "throughput_4proc_steps_s": ("throughput, 4 worker processes", "steps/s", True),
    "latency_p50_ms": ("submit -> first step p50, in-process worker", "ms", False),
    "latency_p99_ms": ("submit -> first step p99, in-process worker", "ms", False),
    "latency_proc_p50_ms": ("submit -> first step p50, worker process", "ms", False),
    "latency_proc_p99_ms": ("submit -> first step p99, worker process", "ms", False),
}


async def bench_backend(
    backend: str, url: str | None, wl: Workload, repeat: int, metrics: set[str]
) -> tuple[dict[str, Metric], list[str]]:
    values: dict[str, list[float]] = {}
    errors: list[str] = []
    tag = uuid.uuid4().hex[:8]
    workloads: list[tuple[str, Callable[[str, str, Workload], Coroutine[Any, Any, dict[str, float]]]]] = [
        ("seq", seq_workload),
        ("throughput", throughput_workload),
        ("latency", latency_workload),
    ]
    for rep in range(repeat):
        for key, fn in workloads:
            if key not in metrics:
                continue
            gc.collect()
            try:
                async with fresh_database(backend, url) as db_url:
                    result = await asyncio.wait_for(fn(db_url, tag, wl), WORKLOAD_TIMEOUT)
            except Exception as exc:
                errors.append(f"{key}, repetition {rep + 1}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
                continue
            for k, v in result.items():
                values.setdefault(k, []).append(v)
            shown = ", ".join(f"{k}={v:.3f}" for k, v in result.items())
            print(f"  {backend} rep {rep + 1}/{repeat} {key}: {shown}", flush=True)
    if backend == "postgres" and "procs" in metrics:
        try:
            async with fresh_database(backend, url) as db_url:
                for k, vs in (await procs_workload(db_url, tag, wl, repeat)).items():
                    values.setdefault(k, []).extend(vs)
        except Exception as exc:
            errors.append(f"procs: {type(exc).__name__}: {exc}")
            traceback.print_exc()
    out: dict[str, Metric] = {}
    for key, (label, unit, higher) in METRICS.items():
        if key in values:
            out[key] = Metric(
                label.format(**asdict(wl)),
                unit,
                values[key],
                target=TARGETS[backend].get(key),
                peers=PEERS[backend].get(key),
                higher_is_better=higher,
            )
    return out, errors


# --- profiling -------------------------------------------------------------------------------
# Blocking waits: where a thread sleeps until work arrives. Left out of the busy time.
_IDLE = ("<method 'poll' of 'select.epoll' objects>", "<method 'get' of '_queue.SimpleQueue' objects>")


def _top(prof: cProfile.Profile, title: str, limit: int) -> str:
    stats = pstats.Stats(prof)
    entries = stats.stats.items()  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    idle = sum(v[2] for (_f, _l, func), v in entries if func in _IDLE)
    busy = max(total - idle, 1e-9)
    buf = io.StringIO()
    buf.write(f"\n{title}: {busy:.3f}s busy (+{idle:.3f}s blocked waiting for work); % of busy time\n")
    buf.write(f"{'own %':>6} {'own s':>7} {'cum s':>7} {'calls':>9}  function, by own time\n")
    own = sorted((kv for kv in entries if kv[0][2] not in _IDLE), key=lambda kv: kv[1][2], reverse=True)
    for key, (_cc, nc, tt, ct, _callers) in own[:limit]:
        buf.write(f"{100 * tt / busy:6.1f} {tt:7.3f} {ct:7.3f} {nc:9d}  {_where(key)}\n")
    # Thread entry points and loops include the blocked time: leave them out of this list.
    mine = (kv for kv in entries if "/corral/" in kv[0][0] and kv[1][3] <= busy)
    corral_fns = sorted(mine, key=lambda kv: kv[1][3], reverse=True)
    buf.write(f"{'cum %':>6} {'own s':>7} {'cum s':>7} {'calls':>9}  corral function, by cumulative time\n")
    for key, (_cc, nc, tt, ct, _callers) in corral_fns[: max(5, limit // 2)]:
        buf.write(f"{100 * ct / busy:6.1f} {tt:7.3f} {ct:7.3f} {nc:9d}  {_where(key)}\n")
    return buf.getvalue()


def _where(key: tuple[str, int, str]) -> str:
    file, line, func = key
    return f"{_short(file)}:{line}({func})" if line else func


def _short(file: str) -> str:
    for marker in ("/corral/", "/asyncio/", "/sqlite3/", "/json/", "/bench/"):
        if marker in file:
            return marker.strip("/") + "/" + file.split(marker, 1)[1]
    return os.path.basename(file)


async def profile_sqlite(wl: Workload, limit: int = 30) -> None:
    """Run the seq and throughput workloads once each under cProfile, in both threads."""
    import corral.store.sqlite as sqlite_mod

    db_profiles: list[cProfile.Profile] = []
    # The store's database thread: cProfile sees one thread, so its loop is wrapped to profile it too.
    db_thread = getattr(sqlite_mod, "_DbThread", None)
    if db_thread is None:
        print("corral.store.sqlite._DbThread is gone: profiling the event loop thread only", file=sys.stderr)
    original = getattr(db_thread, "_main", None)

    def profiled_main(self: Any) -> None:
        prof = cProfile.Profile()
        start = time.thread_time()
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()
            prof.cpu_seconds = time.thread_time() - start  # type: ignore[attr-defined]
            db_profiles.append(prof)

    if db_thread is not None:
        db_thread._main = profiled_main
    try:
        for key, fn in (("seq", seq_workload), ("throughput", throughput_workload)):
            db_profiles.clear()
            prof = cProfile.Profile()
            with sqlite_database() as url:
                wall0, cpu0, thread0 = time.perf_counter(), time.process_time(), time.thread_time()
                prof.enable()
                result = await fn(url, "profile", wl)
                prof.disable()
                wall = time.perf_counter() - wall0
                cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - thread0
            db_cpu = sum(getattr(p, "cpu_seconds", 0.0) for p in db_profiles)
            print(f"\n=== profile: {key} workload (sqlite, under cProfile: absolute times inflated) ===")
            print(", ".join(f"{k}={v:.3f}" for k, v in result.items()))
            print(
                f"wall {wall:.2f}s; process CPU {cpu:.2f}s = event loop thread {loop_cpu:.2f}s"
                f" + database thread {db_cpu:.2f}s + other threads {max(0.0, cpu - loop_cpu - db_cpu):.2f}s"
            )
            print(_top(prof, "event loop thread", limit), end="")
            for p in db_profiles:
                print(_top(p, "database thread", limit // 2), end="")
    finally:
        if db_thread is not None:
            db_thread._main = original


# --- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgres", "all"), default="all")
    p.add_argument("--repeat", type=int, default=None, help="repetitions per metric (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="fewer samples per repetition, for a smoke run")
    p.add_argument(
        "--database-url", default=None, help="PostgreSQL URL (default: $CORRAL_TEST_POSTGRES_URL); never recorded"
    )
    p.add_argument(
        "--metrics",
        default="seq,throughput,latency,procs",
        help="comma-separated subset of seq,throughput,latency,procs",
    )
    p.add_argument(
        "--sqlite-synchronous",
        default="NORMAL",
        choices=("OFF", "NORMAL", "FULL", "EXTRA"),
        help="SQLite PRAGMA synchronous (default NORMAL, Corral's default)",
    )
    p.add_argument("--profile", action="store_true", help="profile the SQLite workloads instead of benchmarking")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--note", default=None, help="free text recorded in the JSON (what else ran, which build)")
    return p.parse_args(argv)


def command_line() -> str:
    """This invocation, with any database URL (it may hold a password) left out."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--database-url":
            skip = True
        elif not arg.startswith("--database-url="):
            argv.append(arg)
    return " ".join(["python bench/engine.py", *argv])


async def amain(args: argparse.Namespace) -> int:
    wl = Workload.quick() if args.quick else Workload()
    wl = dataclasses.replace(wl, sqlite_synchronous=args.sqlite_synchronous)
    if args.profile:
        await profile_sqlite(wl)
        return 0
    repeat = args.repeat or (1 if args.quick else 3)
    metrics = {m.strip() for m in args.metrics.split(",") if m.strip()}
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    pg_url = args.database_url or os.environ.get("CORRAL_TEST_POSTGRES_URL")
    machine = machine_info()
    # Which corral was measured: this work tree's src/, or another copy put first on PYTHONPATH.
    machine["corral_from_this_tree"] = Path(corral.__file__).resolve().is_relative_to(BENCH_DIR.parent / "src")
    print(
        f"corral engine benchmark: {machine['cores']} cores, Python {machine['python']}, SQLite {machine['sqlite']}, "
        f"commit {machine['git_commit']}{' (dirty)' if machine['git_dirty'] else ''}, repeat {repeat}"
        f"{', quick' if args.quick else ''}"
        f"{'' if machine['corral_from_this_tree'] else f', corral imported from {corral.__file__} (not this tree)'}",
        flush=True,
    )
    rows: list[tuple[str, Metric | str]] = []
    failed = False
    for backend in backends:
        if backend == "postgres" and (reason := await postgres_unavailable(pg_url)):
            rows.append((backend, f"unavailable: {reason}"))
            continue
        started = time.perf_counter()
        results, errors = await bench_backend(backend, pg_url if backend == "postgres" else None, wl, repeat, metrics)
        rows.extend((backend, m) for m in results.values())
        rows.extend((backend, f"error: {e}") for e in errors)
        failed = failed or bool(errors)
        if not args.no_write and results:
            sync = wl.sqlite_synchronous
            suffix = "" if backend != "sqlite" or sync == "NORMAL" else f"-{sync.lower()}"
            path = write_results(
                f"engine-{backend}{suffix}",
                {
                    "benchmark": "engine",
                    "backend": backend,
                    "machine": machine,
                    "command": command_line(),
                    "repeat": repeat,
                    "quick": args.quick,
                    "workload": asdict(wl),
                    "seconds": round(time.perf_counter() - started, 1),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "metrics": {k: {"label": m.name, **m.to_json()} for k, m in results.items()},
                    "errors": errors,
                    "note": args.note,
                },
            )
            print(f"  wrote {os.path.relpath(path)}", flush=True)
    print_table(f"Corral engine, medians of {repeat} repetition(s); min and max across repetitions", rows)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
