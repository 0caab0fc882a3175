"""API server benchmark (issue 5): run creation rate, time to first streamed event, and the added
latency of token events with many concurrent streaming clients on one API process.

    python bench/server.py [--clients 1000] [--rates 5,10,20] [--topology embedded,langgraph,split]
                           [--repeat N] [--quick] [--output NAME] [--no-write] [--env CORRAL_X=V ...]

Each repetition starts, on 127.0.0.1 with SQLite in a temporary directory, either ONE `corral serve`
process that also executes the runs (`embedded`, CORRAL_CONCURRENCY=1000), or a `corral serve
--no-worker` API process and one `corral worker --concurrency 1000` (`split`, the fleet's shape;
`--relay redis` adds CORRAL_REDIS_URL to both). It serves `bench/server_app.py`: one chat Agent
per rate R in `--rates` whose SimModel streams R words a second for `--stream-seconds`, each word
stamped with the moment a provider would have had it ready. The peer, `langgraph`, is the
LangGraph API server as `langgraph dev --n-jobs-per-worker 1000` runs it (its in-memory runtime,
one process: LangGraph's production server needs a license key and Docker) serving the same
agents as graphs (`bench/server_langgraph_app.py`); it speaks the same protocol, so the same
client measures both, and each Corral metric shows LangGraph's figure and the ratio beside it.
This process drives them over HTTP:

- create: 4 httpx clients POST /threads/{id}/runs (background, agent `noop`, `enqueue`, cycling
  over 64 threads) as fast as they can for 5 s (3 with --quick); runs created per second (2xx
  answers / elapsed), and created and finished per second (until none of them is pending or
  running: the next phase starts on an idle server).
- first event: one stream at a time, POST /runs/stream (stream_mode messages-tuple); time to the
  first SSE event (metadata) and to the first `messages` token event (includes the SimModel's ttft).
- fanout, per rate: `--clients` clients each stream one run (messages-tuple), their starts spread
  evenly over `--ramp` seconds. Added latency of a token event = its arrival at the client - the
  moment it was due from the model (both `time.monotonic()`, one clock on one host): everything
  the server adds between the provider and the client, its own scheduling delays included.
  "steady" counts the tokens due while every client was streaming (after the last one started,
  before the first one finished): the latency of N concurrent streams, apart from the ramp's run
  creation. Also reported: request-to-run-start delay, errors, events, the processes' CPU and
  the API process's peak RSS (VmRSS, sampled every 50 ms).

Streams are read by a minimal asyncio HTTP/1.1 client (see `_StreamClient`) so that the load
generator, on the same cores, takes as little CPU from the server as it can; its CPU time is
reported beside the figures. The server's access log goes to a file in the temporary directory.
Results are the median, min and max over repetitions, printed as a table and written to
bench/results/<--output>.json, server.json by default (a topology run replaces its own entry
there and keeps the others).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

try:
    import uvloop
except ImportError:  # pragma: no cover - a dependency of corral on Linux and macOS
    uvloop = None
from _common import BENCH_DIR, Metric, machine_info, percentile, postgres_database, print_table, write_results
from server_workload import graph_attribute, rate_name, tokens_at

TOKEN_RE = re.compile(rb'"content":"tok(\d+)@([0-9.]+) ?"')
TARGET_ADDED_P99_MS = "< 10"
# Where `make bench` installs the LangGraph API server (a virtualenv of its own, see the Makefile).
LANGGRAPH_CLI = BENCH_DIR.parent / ".venv" / "peers" / "langgraph-api" / "bin" / "langgraph"


@dataclass
class Config:
    clients: int
    repeat: int
    rates: list[float]
    stream_seconds: float
    ttft: float
    ramp: float
    topology: str  # "embedded": one process; "split": an API process and a worker process; "langgraph": the peer
    relay: str  # split: how events cross from the worker: "store" or "redis"
    redis_url: str | None
    pg_url: str | None  # split: on a fresh database of this PostgreSQL server; None: SQLite
    create_seconds: float
    create_clients: int
    first_event_samples: int
    server_env: dict[str, str] = field(default_factory=dict)  # --env: settings for the server processes
    langgraph_cli: Path = LANGGRAPH_CLI  # the peer's `langgraph` command


# --- the server processes -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corral(*args: str) -> list[str]:
    return [sys.executable, "-m", "corral", *args]


def _rss_kib(pid: int) -> int:
    """VmRSS of `pid` and all its descendants, in KiB (0 once it is gone)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in (task / "children").read_text().split())
    return total


def _cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (and its reaped children) from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples the server's RSS every `interval` seconds in a thread; `peak()` since the last reset."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_kib(self.pid))
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def reset(self) -> None:
        self._peak = _rss_kib(self.pid)

    def peak_mib(self) -> float:
        return max(self._peak, _rss_kib(self.pid)) / 1024

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@dataclass
class Server:
    url: str
    key: str
    proc: subprocess.Popen[bytes]  # the API process
    worker: subprocess.Popen[bytes] | None = None  # split: the process that executes the runs

    def cpu_seconds(self) -> tuple[float, float]:
        """(API process, worker process) CPU seconds so far; the worker's is 0 when embedded."""
        return _cpu_seconds(self.proc.pid), (_cpu_seconds(self.worker.pid) if self.worker else 0.0)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] + ([self.worker.pid] if self.worker else [])


@contextlib.contextmanager
def serve(cfg: Config) -> Iterator[Server]:
    """The server processes on a fresh database; terminated on the way out."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="corral-bench-server-"))
        split_pg = cfg.topology == "split" and cfg.pg_url
        db = stack.enter_context(postgres_database(cfg.pg_url)) if split_pg else f"sqlite:///{Path(tmp) / 'bench.db'}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")},
            "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
            "CORRAL_DATABASE_URL": db,
            "CORRAL_CONCURRENCY": "1000",
            "CORRAL_MAX_QUEUED_PER_TENANT": "1000000",
            "CORRAL_MAX_QUEUED_TOTAL": "1000000",
            "BENCH_RATES": ",".join(f"{r:g}" for r in cfg.rates),
            "BENCH_STREAM_SECONDS": str(cfg.stream_seconds),
            "BENCH_TTFT": str(cfg.ttft),
        }
        if cfg.topology == "split" and cfg.relay == "redis":
            env["CORRAL_REDIS_URL"] = cfg.redis_url or ""
        env.update(cfg.server_env)
        key = "none"  # the LangGraph dev server has no auth and ignores the header
        if cfg.topology != "langgraph":
            key = subprocess.run(
                _corral("keys", "create", "--tenant", "bench", "--principal", "bench"),
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout.strip()
        port = _free_port()
        log = (Path(tmp) / "server.log").open("wb")
        procs: list[subprocess.Popen[bytes]] = []

        def start(*args: str) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                _corral(*args), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            procs.append(proc)
            return proc

        worker = None
        if cfg.topology == "langgraph":
            api = start_langgraph(cfg.langgraph_cli, Path(tmp), port, env, log)
            procs.append(api)
        elif cfg.topology == "split":
            worker = start("worker", "server_app:app", "--concurrency", "1000")
            api = start("serve", "server_app:app", "--no-worker", "--host", "127.0.0.1", "--port", str(port))
        else:
            api = start("serve", "server_app:app", "--host", "127.0.0.1", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        probe = "/ok" if cfg.topology == "langgraph" else "/ready"  # Corral's is ready once its models are loaded
        try:
            deadline = time.monotonic() + 30
            while True:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a server process exited: {_tail(tmp)}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}{probe}", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {_tail(tmp)}")
                time.sleep(0.1)
            yield Server(url, key, api, worker)
        finally:
            for proc in reversed(procs):
                _stop(proc)
            log.close()


def start_langgraph(cli: Path, tmp: Path, port: int, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """`langgraph dev` serving bench/server_langgraph_app.py's graphs, with 1,000 runs at once."""
    app = BENCH_DIR / "server_langgraph_app.py"
    rates = [float(r) for r in env["BENCH_RATES"].split(",")]
    graphs = {"noop": "noop", **{rate_name(r): graph_attribute(r) for r in rates}}
    config = tmp / "langgraph.json"
    config.write_text(
        json.dumps({"dependencies": [str(BENCH_DIR)], "graphs": {g: f"{app}:{v}" for g, v in graphs.items()}})
    )
    # --allow-blocking turns off blockbuster, the dev server's detector of blocking calls, which
    # wraps every socket and file call: LangGraph's production server does not run it.
    args = ["dev", "--no-browser", "--no-reload", "--allow-blocking", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--n-jobs-per-worker", "1000", "--config", str(config), "--server-log-level", "WARNING"]
    env = {**env, "LANGSMITH_TRACING": "false", "LANGGRAPH_CLI_NO_ANALYTICS": "1"}
    return subprocess.Popen(
        [str(cli), *args], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def peer_versions(cli: Path) -> dict[str, str]:
    """The versions of the LangGraph packages beside `cli`, for the record."""
    names = ["langgraph-api", "langgraph-runtime-inmem", "langgraph"]
    code = "import importlib.metadata as m, sys; print(*(m.version(n) for n in sys.argv[1:]))"
    out = subprocess.run([str(cli.with_name("python")), "-c", code, *names], capture_output=True, text=True, timeout=60)
    return dict(zip(names, out.stdout.split(), strict=False)) if out.returncode == 0 else {}


def _tail(tmp: str) -> str:
    with contextlib.suppress(OSError):
        return (Path(tmp) / "server.log").read_text()[-2000:]
    return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def wait_idle(pids: list[int], *, below: float = 0.15, window: float = 0.5, limit: float = 60.0) -> None:
    """Until the server processes use less than `below` of a core over `window` seconds (drained)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0 = sum(_cpu_seconds(p) for p in pids)
        await asyncio.sleep(window)
        if (sum(_cpu_seconds(p) for p in pids) - c0) / window < below:
            return


# --- the workloads --------------------------------------------------------------------------------


def _client(server: Server, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url,
        headers={"x-api-key": server.key},
        timeout=httpx.Timeout(120.0, connect=60.0, pool=120.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def measure_create(server: Server, cfg: Config) -> dict[str, float]:
    """Background runs created per second by a few concurrent clients, each cycling over threads
    of its own (runs on one thread execute one after another, as `enqueue` says)."""
    async with _client(server, cfg.create_clients) as http:
        threads = []
        for _ in range(CREATE_THREADS):
            r = await http.post("/threads", json={})
            r.raise_for_status()
            threads.append(r.json()["thread_id"])
        ok = errors = 0
        end = time.monotonic() + cfg.create_seconds
        start = time.monotonic()

        async def one(mine: list[str]) -> None:
            nonlocal ok, errors
            body = {"assistant_id": "noop", "input": {"messages": []}, "multitask_strategy": "enqueue"}
            turn = 0
            while time.monotonic() < end:
                thread_id, turn = mine[turn % len(mine)], turn + 1
                try:
                    r = await http.post(f"/threads/{thread_id}/runs", json=body)
                    if r.status_code < 300:
                        ok += 1
                    else:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1

        await asyncio.gather(*(one(threads[i :: cfg.create_clients]) for i in range(cfg.create_clients)))
        elapsed = time.monotonic() - start
        drain = await drained(http, threads)
    return {
        "runs_per_s": ok / elapsed,
        "created": ok,
        "errors": errors,
        "drain_s": drain,
        "done_per_s": ok / (elapsed + drain),
    }


async def drained(http: httpx.AsyncClient, threads: list[str], limit: float = 600.0) -> float:
    """Seconds until no run of `threads` is pending or running (what the next phase must not share
    the server with); NaN past `limit`."""
    start = time.monotonic()
    pending = set(threads)
    while pending and time.monotonic() - start < limit:
        for thread_id in list(pending):
            busy = False
            for status in ("pending", "running"):
                r = await http.get(f"/threads/{thread_id}/runs", params={"status": status, "limit": 1})
                r.raise_for_status()
                busy = busy or bool(r.json())
            if not busy:
                pending.discard(thread_id)
        if pending:
            await asyncio.sleep(0.1)
    return time.monotonic() - start if not pending else float("nan")


@dataclass
class StreamResult:
    t_request: float
    t_first_event: float | None = None
    t_meta: float | None = None
    tokens: list[tuple[int, float, float]] = field(default_factory=list)  # (index, produced, arrival)
    error: str | None = None


def stream_body(rate: float, *, cancel_on_disconnect: bool = False) -> bytes:
    """POST /runs/stream's body for the agent that streams `rate` tokens a second; with
    `cancel_on_disconnect`, the run ends when the client goes (it takes no slot afterwards)."""
    body: dict[str, Any] = {
        "assistant_id": rate_name(rate),
        "input": {"messages": [{"role": "user", "content": "go"}]},
        "stream_mode": ["messages-tuple"],
    }
    if cancel_on_disconnect:
        body["on_disconnect"] = "cancel"
    return json.dumps(body).encode()


CREATE_THREADS = 64  # the create phase's threads, shared out among its clients
STREAM_TIMEOUT = 300.0  # a stream that has not ended by then counts as failed; the run goes on


class _StreamClient(asyncio.Protocol):
    """One streamed run read straight off the socket: events are split on the SSE terminator
    (the chunked framing between them is ignored) and only what the benchmark needs is parsed."""

    def __init__(self, res: StreamResult, first_token_only: bool) -> None:
        self.res = res
        self.first_token_only = first_token_only
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.head = True
        self.sep: bytes | None = None  # between events, from the first event's line end (LangGraph's is CRLF)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf, res = self.buf + data, self.res
        if self.head:
            if (i := buf.find(b"\r\n\r\n")) < 0:
                self.buf = buf
                return
            head, buf, self.head = buf[:i], buf[i + 4 :], False
            if (status := int(head.split(b" ", 2)[1])) != 200:
                return self._finish(f"HTTP {status}")
            if b"chunked" not in head.lower():
                return self._finish("not a chunked response")
        ended = buf.endswith(b"\r\n0\r\n\r\n")  # the last chunk: LangGraph ends a stream without `end`
        if self.sep is None:
            at = buf.find(b"event: ")
            if at < 0 or (eol := buf.find(b"\n", at)) < 0:
                self.buf = buf
                return self._finish("no event") if ended else None
            self.sep = b"\r\n\r\n" if buf[eol - 1 : eol] == b"\r" else b"\n\n"
        *events, self.buf = buf.split(self.sep)
        for text in events:
            at = text.find(b"event: ")
            if at < 0:
                continue  # a heartbeat comment, or chunk framing
            name = text[at + 7 : text.find(b"\n", at)].rstrip(b"\r")
            if res.t_first_event is None:
                res.t_first_event = now
            if name == b"messages":
                if m := TOKEN_RE.search(text, at):
                    res.tokens.append((int(m.group(1)), float(m.group(2)), now))
                    if self.first_token_only:
                        return self._finish(None)  # closing leaves the run to finish on its own
            elif name == b"metadata":
                res.t_meta = res.t_meta or now
            elif name == b"end":
                return self._finish(None)
            elif name == b"error":  # what the server said, without the parts that differ per run
                said = text[text.find(b"data: ") + 6 :].decode(errors="replace")
                return self._finish(f"error event: {re.sub(r'[0-9a-f]{8,}|[0-9.]+', '#', said)[:120]}")
        if ended:
            self._finish(None)

    def _finish(self, error: str | None) -> None:
        if error is not None:
            self.res.error = error
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.res.error = self.res.error or (type(exc).__name__ if exc else "closed before the end")
            self.done.set_result(None)


async def stream_one(
    server: Server, body: bytes, delay: float = 0.0, *, first_token_only: bool = False
) -> StreamResult:
    """POST /runs/stream (messages-tuple) over a plain socket; note when each SSE event arrives.

    A minimal HTTP/1.1 client on an asyncio Protocol, so that the load generator takes as little
    as it can of the cores it shares with the server (httpx costs about as much CPU per event as
    the server does)."""
    if delay:
        await asyncio.sleep(delay)
    host, port = server.url.removeprefix("http://").split(":")
    res = StreamResult(t_request=time.monotonic())
    try:
        transport, client = await asyncio.get_running_loop().create_connection(
            lambda: _StreamClient(res, first_token_only), host, int(port)
        )
    except OSError as exc:
        res.error = type(exc).__name__
        return res
    transport.write(
        b"POST /runs/stream HTTP/1.1\r\nhost: %s\r\nx-api-key: %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (host.encode(), server.key.encode(), len(body), body)
    )
    try:
        async with asyncio.timeout(STREAM_TIMEOUT):
            await client.done
    except TimeoutError:
        res.error = f"no end within {STREAM_TIMEOUT:.0f}s"
        transport.close()
    return res


async def measure_first_event(server: Server, cfg: Config) -> dict[str, Any]:
    first, token = [], []
    # Each sample hangs up at its first token: its run is cancelled, so it neither streams on into
    # the fan-out nor holds one of the worker's slots there.
    body = stream_body(cfg.rates[0], cancel_on_disconnect=True)
    for _ in range(cfg.first_event_samples):
        res = await stream_one(server, body, first_token_only=True)
        if res.error or res.t_first_event is None or not res.tokens:
            continue
        first.append((res.t_first_event - res.t_request) * 1000)
        token.append((res.tokens[0][2] - res.t_request) * 1000)
    return {
        "first_event_p50_ms": percentile(first, 50),
        "first_event_p99_ms": percentile(first, 99),
        "first_token_p50_ms": percentile(token, 50),
        "first_token_p99_ms": percentile(token, 99),
        "samples": len(first),
    }


async def measure_fanout(server: Server, cfg: Config, rate: float, rss: RssSampler) -> dict[str, Any]:
    rss.reset()
    body = stream_body(rate)
    cpu0, (api0, worker0), t0 = time.process_time(), server.cpu_seconds(), time.monotonic()
    spread = cfg.ramp / max(1, cfg.clients)
    results = await asyncio.gather(*(stream_one(server, body, i * spread) for i in range(cfg.clients)))
    wall = time.monotonic() - t0
    (api1, worker1), client_cpu = server.cpu_seconds(), time.process_time() - cpu0
    peak = rss.peak_mib()
    added, steady, start_delay = [], [], []
    errors = incomplete = 0
    expected = tokens_at(rate, cfg.stream_seconds)
    good = [r for r in results if not r.error and r.t_meta is not None and r.tokens]
    # Every client streams from the last one's first token due to the first one's last token due.
    window = (max((r.tokens[0][1] for r in good), default=0.0), min((r.tokens[-1][1] for r in good), default=0.0))
    for res in results:
        if res.error or res.t_meta is None:
            errors += 1
            continue
        if len(res.tokens) != expected:
            incomplete += 1
        start_delay.append((res.t_meta - res.t_request) * 1000)
        for _, due, arrival in res.tokens:
            added.append(late := (arrival - due) * 1000)
            if window[0] <= due <= window[1]:
                steady.append(late)
    busy = max(1e-9, window[1] - window[0])
    return {
        "rate": rate,
        "added_p50_ms": percentile(added, 50),
        "added_p99_ms": percentile(added, 99),
        "added_max_ms": max(added, default=float("nan")),
        "steady_p50_ms": percentile(steady, 50),
        "steady_p99_ms": percentile(steady, 99),
        "steady_seconds": max(0.0, window[1] - window[0]),
        "steady_events_per_s": len(steady) / busy if steady else 0.0,
        "start_p50_ms": percentile(start_delay, 50),
        "start_p99_ms": percentile(start_delay, 99),
        "events": len(added),
        "expected_events": cfg.clients * expected,
        "errors": errors,
        "error_kinds": dict(Counter(r.error or "no metadata event" for r in results if r.error or r.t_meta is None)),
        "incomplete": incomplete,
        "peak_rss_mib": peak,
        "wall_s": wall,
        "events_per_s": len(added) / wall if wall else float("nan"),
        "client_cpu_s": client_cpu,
        "api_cpu_s": api1 - api0,
        # Everything the API process did over the fan-out (run creation, the end of each run, its
        # store thread) per token event delivered: steadier than the tail on a shared machine.
        "api_us_per_event": (api1 - api0) / len(added) * 1e6 if added else float("nan"),
        "worker_cpu_s": worker1 - worker0,
    }


async def repetition(cfg: Config) -> dict[str, Any]:
    with serve(cfg) as server:
        rss = RssSampler(server.proc.pid).start()
        try:
            idle_rss = _rss_kib(server.proc.pid) / 1024
            create = await measure_create(server, cfg)
            await wait_idle(server.pids)
            first = await measure_first_event(server, cfg)
            await wait_idle(server.pids)
            fanouts = []
            for rate in cfg.rates:
                fanouts.append(await measure_fanout(server, cfg, rate, rss))
                await wait_idle(server.pids)
        finally:
            rss.stop()
    return {"idle_rss_mib": idle_rss, "create": create, "first": first, "fanout": fanouts}


# --- main -----------------------------------------------------------------------------------------

# topology -> (label, what runs); a label names its entry in server.json
LABELS = {
    "embedded": ("embedded ({store})", "one `corral serve` process"),
    "split": ("split ({store}, {relay})", "`corral serve --no-worker` + `corral worker`"),
    "langgraph": ("langgraph dev (in-memory)", "`langgraph dev --n-jobs-per-worker 1000`, one process"),
}


def compare(metrics: dict[str, Metric], peer: dict[str, Metric]) -> None:
    """Set each metric's `peers` to the peer's median and the ratio peer / Corral."""
    for key, m in metrics.items():
        other = peer.get(key)
        if other is None or not m.values or not other.values:
            continue
        mine, theirs = m.summary()["median"], other.summary()["median"]
        if math.isnan(theirs):  # nothing to compare: e.g. no second in which all of the peer's streams ran
            m.peers = "langgraph -"
            continue
        ratio = f" ({theirs / mine:.3g}x)" if mine and not math.isnan(mine) else ""
        m.peers = f"langgraph {theirs:.4g}{ratio}"


def _metrics(cfg: Config, reps: list[dict[str, Any]]) -> dict[str, Metric]:
    def one(name: str, unit: str, part: str, key: str, **kw: Any) -> Metric:
        return Metric(name, unit, [float(r[part][key]) for r in reps], **kw)

    metrics = {
        "runs_created_per_s": one("runs created /s", "runs/s", "create", "runs_per_s", higher_is_better=True),
        "runs_done_per_s": one("runs created and finished /s", "runs/s", "create", "done_per_s", higher_is_better=True),
        "first_event_p50_ms": one("first SSE event p50", "ms", "first", "first_event_p50_ms"),
        "first_event_p99_ms": one("first SSE event p99", "ms", "first", "first_event_p99_ms"),
        "first_token_p50_ms": one(f"first token p50 (ttft {cfg.ttft:g}s)", "ms", "first", "first_token_p50_ms"),
        "idle_rss_mib": Metric("API RSS at start", "MiB", [float(r["idle_rss_mib"]) for r in reps]),
    }
    c = cfg.clients
    for i, rate in enumerate(cfg.rates):

        def fan(name: str, unit: str, key: str, i: int = i, **kw: Any) -> Metric:
            return Metric(name, unit, [float(r["fanout"][i][key]) for r in reps], **kw)

        def share(name: str, key: str, i: int = i) -> Metric:
            return Metric(name, "cores", [r["fanout"][i][key] / r["fanout"][i]["wall_s"] for r in reps])

        for r in reps:  # a stream missing tokens counts as an error
            r["fanout"][i]["failed_streams"] = r["fanout"][i]["errors"] + r["fanout"][i]["incomplete"]
        t = f"{c} streams x {rate:g} tok/s"
        metrics |= {
            f"steady_p50_ms@{rate:g}": fan(f"{t}: added latency p50, all streaming", "ms", "steady_p50_ms"),
            f"steady_p99_ms@{rate:g}": fan(
                f"{t}: added latency p99, all streaming", "ms", "steady_p99_ms", target=TARGET_ADDED_P99_MS
            ),
            f"added_p99_ms@{rate:g}": fan(f"{t}: added latency p99, with the ramp", "ms", "added_p99_ms"),
            f"steady_events_per_s@{rate:g}": fan(
                f"{t}: token events /s, all streaming", "events/s", "steady_events_per_s"
            ),
            f"start_p99_ms@{rate:g}": fan(f"{t}: request to run start p99", "ms", "start_p99_ms"),
            f"failed_streams@{rate:g}": fan(f"{t}: streams failed or missing tokens", "count", "failed_streams"),
            f"api_cores@{rate:g}": share(f"{t}: API process CPU", "api_cpu_s"),
            f"api_us_per_event@{rate:g}": fan(f"{t}: API CPU per token event", "us", "api_us_per_event"),
            f"worker_cores@{rate:g}": share(f"{t}: worker process CPU", "worker_cpu_s"),
            f"client_cores@{rate:g}": share(f"{t}: load generator CPU", "client_cpu_s"),
            f"peak_rss_mib@{rate:g}": fan(f"{t}: API peak RSS", "MiB", "peak_rss_mib"),
        }
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=None, help="concurrent streaming clients (default 1000)")
    parser.add_argument("--rates", default=None, help="tokens per second of each stream, a list (default 5,10,20)")
    parser.add_argument("--stream-seconds", type=float, default=None, help="length of each stream (default 30)")
    parser.add_argument("--ramp", type=float, default=None, help="spread the clients' starts over this (default 10)")
    parser.add_argument("--ttft", type=float, default=0.1, help="SimModel ttft in seconds (default 0.1)")
    parser.add_argument(
        "--topology",
        default="embedded",
        help="a list of: embedded (one corral process), split (API + worker processes), langgraph (the peer)",
    )
    parser.add_argument("--relay", choices=["store", "redis"], default=None, help="split: events via (default redis)")
    parser.add_argument("--redis-url", default=os.environ.get("CORRAL_TEST_REDIS_URL"), help="for --relay redis")
    parser.add_argument(
        "--pg-url", default=os.environ.get("CORRAL_TEST_POSTGRES_URL"), help="split runs on PostgreSQL (else SQLite)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="100 clients at 20 tok/s for 5 s, 1 repetition")
    parser.add_argument(
        "--env", action="append", default=[], metavar="CORRAL_X=V", help="a server setting (repeatable)"
    )
    parser.add_argument(
        "--langgraph-cli", type=Path, default=LANGGRAPH_CLI, help="the peer's `langgraph` (make bench installs it)"
    )
    parser.add_argument("--output", default="server", help="the results' name: bench/results/<output>.json")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/<output>.json")
    args = parser.parse_args()
    relay = args.relay or ("redis" if args.redis_url else "store")
    if relay == "redis" and not args.redis_url:
        parser.error("--relay redis needs --redis-url (or CORRAL_TEST_REDIS_URL)")
    topologies = [t.strip() for t in args.topology.split(",") if t.strip()]
    server_env = dict(item.partition("=")[::2] for item in args.env)
    if any(not k.startswith("CORRAL_") for k in server_env):
        parser.error("--env takes CORRAL_NAME=VALUE")
    if not topologies or set(topologies) - set(LABELS):
        parser.error(f"--topology takes a list of {', '.join(LABELS)}")
    if "langgraph" in topologies and not args.langgraph_cli.exists():
        parser.error(
            f"the langgraph peer needs the LangGraph API server at {args.langgraph_cli}: `make bench` installs it "
            "(or pass --langgraph-cli, or --topology embedded)"
        )
    base = Config(
        clients=args.clients or (100 if args.quick else 1000),
        repeat=args.repeat or (1 if args.quick else 3),
        rates=[float(r) for r in (args.rates or ("20" if args.quick else "5,10,20")).split(",")],
        stream_seconds=args.stream_seconds or (5.0 if args.quick else 30.0),
        ttft=args.ttft,
        ramp=args.ramp if args.ramp is not None else (2.0 if args.quick else 10.0),
        topology="embedded",
        relay=relay,
        redis_url=args.redis_url,
        pg_url=args.pg_url,
        create_seconds=3.0 if args.quick else 5.0,
        create_clients=4,
        first_event_samples=20 if args.quick else 50,
        server_env=server_env,
        langgraph_cli=args.langgraph_cli,
    )
    info = machine_info()
    print(
        f"{base.clients} streaming clients, starts over {base.ramp:g}s, each stream {base.stream_seconds:g}s at "
        f"{', '.join(f'{r:g}' for r in base.rates)} tok/s (ttft {base.ttft:g}s) | {base.repeat} repetition(s) | "
        f"{info['usable_cores']} cores, load {info['load_average_at_start']}",
        flush=True,
    )
    results: dict[str, Any] = {}
    measured: dict[str, dict[str, Metric]] = {}
    rows: list[tuple[str, Metric | str]] = []
    for topology in topologies:
        cfg = replace(base, topology=topology)
        store = "postgres" if topology == "split" and cfg.pg_url else "sqlite"
        label, what = LABELS[topology]
        label = label.format(store=store, relay=relay)
        print(f"\n{label}: {what}", flush=True)
        reps: list[dict[str, Any]] = []
        failures: list[str] = []
        for n in range(cfg.repeat):
            try:
                # uvloop for the load generator too: it shares the cores with the server.
                rep = uvloop.run(repetition(cfg)) if uvloop is not None else asyncio.run(repetition(cfg))
            except Exception as exc:  # one failed repetition is reported, the others still count
                traceback.print_exc()
                failures.append(f"repetition {n + 1}: {type(exc).__name__}: {exc}")
                continue
            line = [f"  rep {n + 1}: create {rep['create']['runs_per_s']:.0f} runs/s"]
            for f in rep["fanout"]:
                line.append(
                    f"{f['rate']:g} tok/s: steady p50 {f['steady_p50_ms']:.1f} p99 {f['steady_p99_ms']:.1f} ms "
                    f"({f['steady_events_per_s']:.0f} events/s), ramp p99 {f['added_p99_ms']:.1f} ms, "
                    f"{f['errors'] + f['incomplete']} errors {f['error_kinds'] or ''}, "
                    f"API {f['api_cpu_s'] / f['wall_s']:.2f} "
                    f"worker {f['worker_cpu_s'] / f['wall_s']:.2f} client {f['client_cpu_s'] / f['wall_s']:.2f} cores"
                )
            print(" | ".join(line), flush=True)
            reps.append(rep)
        metrics = _metrics(cfg, reps) if reps else {}
        if topology != "split":  # one process
            for key in [k for k in metrics if k.startswith("worker_cores@")]:
                del metrics[key]
        measured[label] = metrics
        rows.extend((label, m) for m in metrics.values())  # printed at the end: peers fill in until then
        rows.extend((label, f"note: {f}") for f in failures)
        results[label] = {
            "config": {
                **asdict(cfg),
                "pg_url": None,
                "redis_url": None,
                "langgraph_cli": None,
                "concurrency": 1000,
                "store": store if topology != "langgraph" else "memory",
                **({"versions": peer_versions(cfg.langgraph_cli)} if topology == "langgraph" else {}),
            },
            "metrics": {k: m.to_json() for k, m in metrics.items()},
            "repetitions": reps,
            "failures": failures,
        }
    notes = [
        "added latency = token arrival at the client - the moment the model had it due (one host clock)",
        "all streaming = tokens due after the last client started and before the first one finished",
    ]
    if base.clients < 1000:
        notes.append(f"ran {base.clients} clients, not 1,000")
    measured_peer = LABELS["langgraph"][0]
    if measured_peer in measured:
        notes.append("peers: LangGraph's figure (langgraph dev, in-memory) and its ratio to Corral's one process")
        for label, metrics in measured.items():
            if label.startswith("embedded"):  # the same shape: one process serving and executing
                compare(metrics, measured[measured_peer])
                results[label]["metrics"] = {k: m.to_json() for k, m in metrics.items()}
    rows.extend(("", f"note: {n}") for n in notes)
    print_table("\nAPI server benchmark (one API process)", rows)
    if not args.no_write:
        # Topologies not run this time keep their last results; each says when and where it ran.
        for entry in results.values():
            entry["machine"] = info
            entry["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        previous = BENCH_DIR / "results" / f"{args.output}.json"
        kept = json.loads(previous.read_text()).get("topologies", {}) if previous.exists() else {}
        path = write_results(
            args.output,
            {"benchmark": "server", "topologies": {**kept, **results}, "notes": notes},
        )
        print(f"\nwrote {path.relative_to(BENCH_DIR.parent)}")
    return 0 if all(r["repetitions"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
