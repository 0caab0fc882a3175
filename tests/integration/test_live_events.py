"""Live run events across processes, the production topology: `corral worker` processes execute
runs, `corral serve --no-worker` API processes stream them. A model's tokens must reach a client
of an API process as they come, not all at once when the call ends: from the store (the runner
flushes a step's events every `event_flush_seconds`) or from Redis (`redis_url`). Reconnecting
with Last-Event-ID to another API process yields exactly the missed events; a worker that lost
its lease cannot flush; Redis going away mid-run fails nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from live_agents import REPLY, STREAM_SECONDS, TOKENS_PER_SECOND, chat

from corral import App, SimModel
from corral.api import create_key
from corral.config import Settings
from corral.engine.worker import Worker
from corral.errors import ConfigError
from corral.store import open_store
from corral.store.base import Event
from helpers import eventually, free_port, make_app, stop_process

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.live_agents:app"
INPUT = {"messages": [{"role": "user", "content": "count for me"}]}


@dataclass
class Fleet:
    """`corral` processes on one database (and Redis, when `redis_url` is set), logging to `log`."""

    database_url: str
    redis_url: str | None
    log: Path
    key: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, *args: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        if self.redis_url:
            env["CORRAL_REDIS_URL"] = self.redis_url
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "corral", *args, "--database-url", self.database_url],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.procs.append(proc)
        return proc

    def worker(self) -> subprocess.Popen:
        return self.spawn("worker", APP)

    def api(self) -> str:
        """Start an API process that executes no run; its URL once it answers."""
        url = f"http://127.0.0.1:{(port := free_port())}"
        proc = self.spawn("serve", APP, "--no-worker", "--port", str(port))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the API process exited:\n{self.log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    return url
            time.sleep(0.1)
        raise AssertionError(f"{url} did not come up:\n{self.log.read_text()}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)


async def _new_key(database_url: str) -> str:
    async with open_store(Settings(database_url=database_url)) as store:
        return await create_key(store, "t1", "p1", ())


@pytest.fixture(params=["store", "redis"])
def live_via(request: pytest.FixtureRequest) -> str | None:
    """How live events cross processes: the store alone, or Redis too (its URL)."""
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


@pytest.fixture
async def fleet(database_url: str, live_via: str | None, tmp_path: Path) -> Any:
    f = Fleet(database_url, live_via, tmp_path / "fleet.log", key=await _new_key(database_url))
    try:
        yield f
    finally:
        await asyncio.to_thread(f.stop)


def _words(parts: list[Any]) -> list[str]:
    return [p.data[0]["content"] for p in parts if p.event == "messages"]


def _lateness(arrivals: list[float]) -> list[float]:
    """How much later than the first word each word arrived than the model produced it: the
    model makes word i at 1/TOKENS_PER_SECOND * i after word 0."""
    return [t - arrivals[0] - i / TOKENS_PER_SECOND for i, t in enumerate(arrivals)]


def _assert_ids(parts: list[Any]) -> None:
    ids = [int(p.id) for p in parts]
    assert ids == sorted(set(ids)), ids


async def test_tokens_reach_a_client_of_another_process_as_they_come(fleet: Fleet) -> None:
    fleet.worker()
    url = await asyncio.to_thread(fleet.api)
    arrivals: list[tuple[float, Any]] = []
    async with get_client(url=url, api_key=fleet.key) as client:
        thread = await client.threads.create()
        stream = client.runs.stream(thread["thread_id"], "chat", input=INPUT, stream_mode="messages-tuple")
        async for part in stream:
            arrivals.append((time.monotonic(), part))
    parts = [p for _, p in arrivals]
    assert parts[0].event == "metadata" and parts[-1].event == "end", [p.event for p in parts]
    assert "".join(_words(parts)) == REPLY  # every word once, in order
    _assert_ids(parts)
    times = [t for t, p in arrivals if p.event == "messages"]
    # Spread as produced: the first word arrives well before the last is produced...
    assert times[-1] - times[0] > 0.6 * STREAM_SECONDS, f"words arrived within {times[-1] - times[0]:.2f}s"
    # ...and none waits for the idle poll (poll_max = 1 s) or the end of the model call.
    late = _lateness(times)
    assert max(late) < 0.8, f"a word arrived {max(late):.2f}s late"


async def test_reconnecting_to_another_api_process_mid_step_yields_exactly_the_missed_events(
    fleet: Fleet,
) -> None:
    fleet.worker()
    first, second = await asyncio.gather(asyncio.to_thread(fleet.api), asyncio.to_thread(fleet.api))
    async with get_client(url=first, api_key=fleet.key) as client:
        thread = await client.threads.create()
        tid = thread["thread_id"]
        run = await client.runs.create(tid, "chat", input=INPUT, stream_mode="messages-tuple")
        seen: list[Any] = []
        async with contextlib.aclosing(client.runs.join_stream(tid, run["run_id"])) as stream:
            async for part in stream:
                seen.append(part)
                if len(_words(seen)) == 5:
                    break
    await asyncio.sleep(0.5)  # the model goes on while nobody listens
    rest: list[tuple[float, Any]] = []
    async with get_client(url=second, api_key=fleet.key) as client:
        async for part in client.runs.join_stream(tid, run["run_id"], last_event_id=seen[-1].id):
            rest.append((time.monotonic(), part))
        whole = [p async for p in client.runs.join_stream(tid, run["run_id"])]
        assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"
    resumed = [p for _, p in rest]
    assert [(p.id, p.event, p.data) for p in seen + resumed] == [(p.id, p.event, p.data) for p in whole]
    assert "".join(_words(whole)) == REPLY
    _assert_ids(whole)
    # The second process joined mid-step: the words it missed came at once, the others as produced.
    times = [t for t, p in rest if p.event == "messages"]
    assert times[-1] - times[0] > 0.4 * STREAM_SECONDS, f"words arrived within {times[-1] - times[0]:.2f}s"


@pytest.mark.chaos
async def test_redis_going_away_mid_run_fails_nothing(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fleet = Fleet(database_url, f"redis://127.0.0.1:{port}/0", tmp_path / "fleet.log", key=await _new_key(database_url))
    try:
        await eventually(lambda: asyncio.to_thread(_pings, f"redis://127.0.0.1:{port}/0"), timeout=10)
        fleet.worker()
        url = await asyncio.to_thread(fleet.api)
        parts: list[Any] = []
        async with get_client(url=url, api_key=fleet.key) as client:
            thread = await client.threads.create()
            async for part in client.runs.stream(
                thread["thread_id"], "chat", input=INPUT, stream_mode="messages-tuple"
            ):
                parts.append(part)
                if len(_words(parts)) == 5:
                    redis_server.kill()  # SIGKILL: both the worker's writes and the API's subscription break
                    redis_server.wait()
            run = (await client.runs.list(thread["thread_id"]))[0]
        assert run["status"] == "success"
        assert parts[-1].event == "end"
        assert "".join(_words(parts)) == REPLY
        _assert_ids(parts)
        log = fleet.log.read_text()
        assert "Redis" in log and "Traceback" not in log, log
    finally:
        await asyncio.to_thread(fleet.stop)
        stop_process(redis_server)


def _pings(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


async def test_an_unreachable_redis_stops_start_up_naming_its_url(sqlite_url: str, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = make_app(sqlite_url, [chat], redis_url=url)
    with pytest.raises(ConfigError, match=url.replace(".", r"\.")):
        await app.open()
    await app.close()
    fleet = Fleet(sqlite_url, url, tmp_path / "fleet.log")
    proc = fleet.worker()
    assert await asyncio.to_thread(proc.wait, 30) == 2
    assert f"corral: cannot reach Redis at {url}" in fleet.log.read_text()


@contextlib.asynccontextmanager
async def _streaming_run(database_url: str, **settings: Any) -> AsyncIterator[tuple[App, Worker, str]]:
    """An app whose in-process worker executes a run of a model that streams 20 words a second."""
    model = SimModel(replies=[REPLY], tokens_per_second=20)
    async with make_app(database_url, [chat], models={"default": model}, **settings) as app:
        run_id = await app.submit("chat", INPUT)
        worker = app.worker()
        task = asyncio.create_task(worker.run())
        try:
            yield app, worker, run_id
        finally:
            worker.stop()
            await task


async def _tokens_in_store(app: App, run_id: str) -> int:
    return sum(e.type == "token" for e in await app.events(run_id))


@pytest.mark.parametrize("flush", [0.0, 0.05])
async def test_a_step_in_flight_writes_its_events_every_flush_interval(database_url: str, flush: float) -> None:
    async with _streaming_run(database_url, event_flush_seconds=flush) as (app, _, run_id):
        await eventually(lambda: _emitted(app, run_id, 10))
        await asyncio.sleep(0.2)
        in_store = await _tokens_in_store(app, run_id)
        if flush:
            assert in_store >= 8  # all but the last flush interval's
        else:
            assert in_store == 0  # written only with the step's result, as before
        result = await app.wait(run_id, timeout=30)
        events = await app.events(run_id)
    assert result.ok
    assert [e.id for e in events] == list(range(1, len(events) + 1))  # no gap, nothing twice
    assert "".join(e.data["text"] for e in events if e.type == "token") == REPLY


async def _emitted(app: App, run_id: str, tokens: int) -> bool:
    runner = app._runners.get(run_id)
    if runner is None:
        return False
    written = await _tokens_in_store(app, run_id)
    return written + sum(e.type == "token" for e in runner.unwritten_events()) >= tokens


async def test_a_worker_that_lost_its_lease_cannot_flush_events(database_url: str) -> None:
    async with _streaming_run(database_url, event_flush_seconds=0.05, lease_seconds=30) as (app, worker, run_id):
        await eventually(lambda: _flushed(app, run_id, 3))
        # Another worker takes the run over, as once the lease expired: attempt 2 is current.
        [claim] = await app.store.claim_runs("other-worker", 1, ["chat"], 30, time.time() + 60, run_id=run_id)
        assert claim.run.attempt == 2
        written = await app.events(run_id)
        # The zombie learns it at its next flush, long before its heartbeat (every 10 s) would.
        await eventually(lambda: _not_active(worker, run_id), timeout=3)
        await asyncio.sleep(0.3)
        assert await app.events(run_id) == written  # nothing more from the old attempt
        assert not any(e.type == "end" for e in written)
        run = await app.get_run(run_id)
        assert run.attempt == 2 and run.lease_owner == "other-worker"


async def _flushed(app: App, run_id: str, tokens: int) -> bool:
    return await _tokens_in_store(app, run_id) >= tokens


async def _not_active(worker: Worker, run_id: str) -> bool:
    return run_id not in worker.active


async def test_with_redis_a_watcher_elsewhere_catches_up_mid_step_from_the_runs_stream(
    database_url: str, redis_url: str
) -> None:
    # No flush: the step's tokens are in Redis alone until the step ends.
    async with _streaming_run(database_url, event_flush_seconds=0, redis_url=redis_url) as (app, _, run_id):
        async with make_app(database_url, [chat], redis_url=redis_url) as elsewhere:
            await eventually(lambda: _emitted(app, run_id, 10))
            assert await _tokens_in_store(app, run_id) == 0
            seen: list[Event] = []
            async for event in elsewhere.watch(run_id, after=3):
                if not seen:  # it came from the stream: the step is still in flight
                    assert await _tokens_in_store(app, run_id) == 0
                seen.append(event)
            stored = await elsewhere.events(run_id)
    assert seen == stored[3:]  # from the stream, then live, then the store: each event once, in order
    assert seen[-1].type == "end" and "".join(e.data["text"] for e in seen if e.type == "token") == REPLY


async def test_streaming_runs_share_one_flush_write_per_tick(database_url: str) -> None:
    """Twenty runs streaming at once cost one store write per flush tick, not one per run."""
    model = SimModel(replies=[REPLY], tokens_per_second=20)
    async with make_app(database_url, [chat], models={"default": model}, event_flush_seconds=0.1) as app:
        ids = [await app.submit("chat", INPUT, session_id=f"s{i}") for i in range(20)]
        worker = app.worker(concurrency=20)
        task = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: _all_flushed_some(app, ids), timeout=10)
            assert app.flusher is not None
            started = time.monotonic()
            writes = app.flusher.writes
            await asyncio.sleep(0.5)
            ticks = (time.monotonic() - started) / app.flusher.tick
            assert app.flusher.writes - writes <= ticks + 2  # 20 runs, each emitting a token every 50 ms
            for run_id in ids:
                assert (await app.wait(run_id, timeout=30)).ok
        finally:
            worker.stop()
            await task
        for run_id in ids:
            events = await app.events(run_id)
            assert [e.id for e in events] == list(range(1, len(events) + 1))
            assert "".join(e.data["text"] for e in events if e.type == "token") == REPLY


async def _all_flushed_some(app: App, ids: list[str]) -> bool:
    return all([await _tokens_in_store(app, run_id) >= 2 for run_id in ids])


def _count_calls(obj: Any, name: str) -> list[None]:
    """From now on, one item per call of the coroutine method `obj.<name>`."""
    calls: list[None] = []
    method = getattr(obj, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        return await method(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


async def test_waiting_elsewhere_is_not_woken_by_every_announced_flush(postgres_url: str) -> None:
    """PostgreSQL announces each flush of a step's tokens to every process; a process that only
    waits for the run's end reads the run when it changed, not at every flush (a thousand
    streams would cost a thousand reads per flush tick)."""
    async with _streaming_run(postgres_url, event_flush_seconds=0.05) as (_, _, run_id):
        async with make_app(postgres_url, [chat], poll_max=5.0) as elsewhere:  # no poll while it streams
            pokes: list[bool] = []
            elsewhere.store.subscribe_events(lambda rid, changed: pokes.append(changed))
            reads = _count_calls(elsewhere.store, "get_run")
            result = await elsewhere.wait(run_id, timeout=30)
    assert result.ok and result.output is not None
    flushes = pokes.count(False)
    assert flushes >= 10  # the flushes were announced here (the stream lasts ~2 s, a flush every 25 ms)
    assert True in pokes  # and so was the end
    assert len(reads) <= 3  # the first read and the end's (one spare): not one per flush


async def test_waiting_elsewhere_backs_off_when_the_store_announces_the_end(postgres_url: str) -> None:
    """The end of a run elsewhere is announced: App.wait's reads are a safety net, doubling from
    poll_max, and the wait still returns as soon as the run ends."""
    async with _streaming_run(postgres_url, event_flush_seconds=0.05) as (_, _, run_id):
        async with make_app(postgres_url, [chat], poll_max=0.1) as elsewhere:
            reads = _count_calls(elsewhere.store, "get_run")
            started = time.monotonic()
            result = await elsewhere.wait(run_id, timeout=30)
            waited, returned = time.monotonic() - started, time.time()
            ended = (await elsewhere.get_run(run_id)).finished_at
    assert result.ok
    assert waited >= 1  # the stream lasts ~1.5 s: every 0.1 s would be over a dozen reads
    assert len(reads) <= 6  # 0.1, 0.2, 0.4, 0.8 s apart, then the end's poke
    assert ended is not None and returned - ended < 0.5  # woken by the end, not by the next read
