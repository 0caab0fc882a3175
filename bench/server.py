"""API server benchmark (issue 5): run creation rate, time to first streamed event, and the added
latency of token events with many concurrent streaming clients on one API process.

    python bench/server.py [--clients 1000] [--repeat N] [--quick] [--no-write]

Each repetition starts ONE `corral serve` subprocess on 127.0.0.1 (its in-process worker,
CORRAL_CONCURRENCY=1000, SQLite in a temporary directory) serving `bench/server_app.py`: a chat
Agent whose SimModel replies with `--tokens` words, the first `--ttft` seconds after the model call
and then one every 1/`--tps` seconds on a fixed schedule (as a provider streams), each word
stamped with the moment the model produced it. This process drives it over HTTP:

- create: `--create-clients` httpx clients POST /threads/{id}/runs (background, agent `noop`) as
  fast as they can for `--create-seconds`; runs created per second (2xx answers / elapsed).
- first event: one stream at a time, POST /runs/stream (stream_mode messages-tuple); time to the
  first SSE event (metadata) and to the first `messages` token event (includes the SimModel's ttft).
- fanout: `--clients` clients each stream one run (messages-tuple), their starts spread evenly over
  `--ramp` seconds. Added latency of a token event = its arrival at the client - the moment the
  model produced it (both `time.monotonic()`, one clock on one host): everything the server adds
  between the provider and the client (runner, event bus, mapping, JSON, SSE, loopback TCP).
  Also reported: request-to-run-start delay, errors, events, and the server's peak RSS (VmRSS of
  the process and its children, sampled every 50 ms).

Streams are read by a minimal asyncio HTTP/1.1 client (see `stream_one`) so that the load
generator, on the same 2 cores, takes as little CPU from the server as it can; its CPU time is
reported beside the figures. The server's access log goes to a file in the temporary directory.
Results are the median, min and max over repetitions, printed as a table and written to
bench/results/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

try:
    import uvloop
except ImportError:  # pragma: no cover - a dependency of corral on Linux and macOS
    uvloop = None
from _common import BENCH_DIR, Metric, machine_info, percentile, print_table, write_results

TOKEN_RE = re.compile(rb'"content":"tok(\d+)@([0-9.]+) ?"')
TARGET_ADDED_P99_MS = "< 10"


@dataclass
class Config:
    clients: int
    repeat: int
    tokens: int
    ttft: float
    tps: float
    ramp: float
    create_seconds: float
    create_clients: int
    first_event_samples: int


# --- the server process ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corral(*args: str) -> list[str]:
    if args[0] == "serve" and os.environ.get("BENCH_CPROFILE"):
        return [sys.executable, os.environ["BENCH_CPROFILE"], *args]
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
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def serve(cfg: Config) -> Iterator[Server]:
    """`corral serve server_app:app` on a fresh SQLite database; terminated on the way out."""
    with tempfile.TemporaryDirectory(prefix="corral-bench-server-") as tmp:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
            "CORRAL_DATABASE_URL": f"sqlite:///{Path(tmp) / 'bench.db'}",
            "CORRAL_CONCURRENCY": "1000",
            "CORRAL_MAX_QUEUED_PER_TENANT": "1000000",
            "CORRAL_MAX_QUEUED_TOTAL": "1000000",
            "BENCH_TOKENS": str(cfg.tokens),
            "BENCH_TTFT": str(cfg.ttft),
            "BENCH_TOKENS_PER_SECOND": str(cfg.tps),
        }
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
        proc = subprocess.Popen(
            _corral("serve", os.environ.get("BENCH_APP", "server_app:app"), "--host", "127.0.0.1", "--port", str(port)),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode}: {_tail(tmp)}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {_tail(tmp)}")
                time.sleep(0.1)
            yield Server(url, key, proc)
        finally:
            _stop(proc)
            log.close()


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


async def wait_idle(pid: int, *, below: float = 0.15, window: float = 0.5, limit: float = 20.0) -> None:
    """Until the server uses less than `below` of a core over `window` seconds (its runs drained)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0 = _cpu_seconds(pid)
        await asyncio.sleep(window)
        if (_cpu_seconds(pid) - c0) / window < below:
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
    """Background runs created per second by a few concurrent clients, each on its own thread."""
    async with _client(server, cfg.create_clients) as http:
        threads = []
        for _ in range(cfg.create_clients):
            r = await http.post("/threads", json={})
            r.raise_for_status()
            threads.append(r.json()["thread_id"])
        ok = errors = 0
        end = time.monotonic() + cfg.create_seconds
        start = time.monotonic()

        async def one(thread_id: str) -> None:
            nonlocal ok, errors
            body = {"assistant_id": "noop", "input": {"messages": []}, "multitask_strategy": "enqueue"}
            while time.monotonic() < end:
                try:
                    r = await http.post(f"/threads/{thread_id}/runs", json=body)
                    if r.status_code < 300:
                        ok += 1
                    else:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1

        await asyncio.gather(*(one(t) for t in threads))
        elapsed = time.monotonic() - start
    return {"runs_per_s": ok / elapsed, "created": ok, "errors": errors}


@dataclass
class StreamResult:
    t_request: float
    t_first_event: float | None = None
    t_meta: float | None = None
    tokens: list[tuple[int, float, float]] = field(default_factory=list)  # (index, produced, arrival)
    error: str | None = None


STREAM_BODY = json.dumps(
    {
        "assistant_id": "chat",
        "input": {"messages": [{"role": "user", "content": "go"}]},
        "stream_mode": ["messages-tuple"],
    }
).encode()


async def stream_one(server: Server, delay: float = 0.0, *, first_token_only: bool = False) -> StreamResult:
    """POST /runs/stream (messages-tuple) over a plain socket; note when each SSE event arrives.

    A minimal HTTP/1.1 client (one request, a chunked response), so that the load generator takes
    as little as possible of the cores it shares with the server: httpx costs about as much CPU
    per event as the server does."""
    if delay:
        await asyncio.sleep(delay)
    host, port = server.url.removeprefix("http://").split(":")
    res = StreamResult(t_request=time.monotonic())
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
        writer.write(
            b"POST /runs/stream HTTP/1.1\r\nhost: %s\r\nx-api-key: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (host.encode(), server.key.encode(), len(STREAM_BODY), STREAM_BODY)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            res.error = f"HTTP {status}"
            return res
        if b"chunked" not in head.lower():
            res.error = "not a chunked response"
            return res
        event = b""
        while size := int((await reader.readline()).strip() or b"0", 16):
            data = await reader.readexactly(size + 2)
            now = time.monotonic()
            for line in data.split(b"\n"):
                if line.startswith(b"event: "):
                    event = line[7:].strip()
                    if res.t_first_event is None:
                        res.t_first_event = now
                    if event == b"metadata" and res.t_meta is None:
                        res.t_meta = now
                    elif event == b"error":
                        res.error = "error event"
                elif event == b"messages" and line.startswith(b"data: "):
                    if m := TOKEN_RE.search(line):
                        res.tokens.append((int(m.group(1)), float(m.group(2)), now))
                        if first_token_only:
                            return res  # closing the connection leaves the run to finish on its own
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        res.error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    return res


async def measure_first_event(server: Server, cfg: Config) -> dict[str, Any]:
    first, token = [], []
    for _ in range(cfg.first_event_samples):
        res = await stream_one(server, first_token_only=True)
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


async def measure_fanout(server: Server, cfg: Config, rss: RssSampler) -> dict[str, Any]:
    rss.reset()
    cpu0, scpu0, t0 = time.process_time(), _cpu_seconds(server.proc.pid), time.monotonic()
    spread = cfg.ramp / max(1, cfg.clients)
    results = await asyncio.gather(*(stream_one(server, i * spread) for i in range(cfg.clients)))
    wall = time.monotonic() - t0
    client_cpu, server_cpu = time.process_time() - cpu0, _cpu_seconds(server.proc.pid) - scpu0
    peak = rss.peak_mib()
    added, start_delay = [], []
    errors = incomplete = 0
    for res in results:
        if res.error or res.t_meta is None:
            errors += 1
            continue
        if len(res.tokens) != cfg.tokens:
            incomplete += 1
        start_delay.append((res.t_meta - res.t_request) * 1000)
        added.extend((arrival - produced) * 1000 for _, produced, arrival in res.tokens)
    return {
        "added_p50_ms": percentile(added, 50),
        "added_p99_ms": percentile(added, 99),
        "added_max_ms": max(added, default=float("nan")),
        "start_p50_ms": percentile(start_delay, 50),
        "start_p99_ms": percentile(start_delay, 99),
        "events": len(added),
        "expected_events": cfg.clients * cfg.tokens,
        "errors": errors,
        "incomplete": incomplete,
        "peak_rss_mib": peak,
        "wall_s": wall,
        "events_per_s": len(added) / wall if wall else float("nan"),
        "client_cpu_s": client_cpu,
        "server_cpu_s": server_cpu,
    }


async def repetition(cfg: Config) -> dict[str, Any]:
    with serve(cfg) as server:
        rss = RssSampler(server.proc.pid).start()
        try:
            idle_rss = _rss_kib(server.proc.pid) / 1024
            create = await measure_create(server, cfg)
            await wait_idle(server.proc.pid)
            first = await measure_first_event(server, cfg)
            await wait_idle(server.proc.pid)
            fanout = await measure_fanout(server, cfg, rss)
        finally:
            rss.stop()
    return {"idle_rss_mib": idle_rss, "create": create, "first": first, "fanout": fanout}


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=None, help="concurrent streaming clients (default 1000)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="100 clients, 1 repetition, shorter phases")
    parser.add_argument("--tokens", type=int, default=50, help="tokens per reply (default 50)")
    parser.add_argument("--ttft", type=float, default=0.1, help="SimModel ttft in seconds (default 0.1)")
    parser.add_argument("--tps", type=float, default=20.0, help="SimModel tokens per second (default 20)")
    parser.add_argument("--ramp", type=float, default=None, help="spread the clients' starts over this (s)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/server.json")
    args = parser.parse_args()
    clients = args.clients or (100 if args.quick else 1000)
    cfg = Config(
        clients=clients,
        repeat=args.repeat or (1 if args.quick else 3),
        tokens=args.tokens,
        ttft=args.ttft,
        tps=args.tps,
        ramp=args.ramp if args.ramp is not None else min(2.0, clients / 500),
        create_seconds=3.0 if args.quick else 5.0,
        create_clients=4,
        first_event_samples=20 if args.quick else 50,
    )
    info = machine_info()
    print(
        f"corral serve (1 process, in-process worker, SQLite) | {cfg.clients} streaming clients, "
        f"{cfg.tokens} tokens at {cfg.tps:g}/s after ttft {cfg.ttft:g}s, starts over {cfg.ramp:g}s | "
        f"{cfg.repeat} repetition(s) | {info['usable_cores']} cores, load {info['load_average_at_start']}",
        flush=True,
    )
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
        f = rep["fanout"]
        print(
            f"  rep {n + 1}: create {rep['create']['runs_per_s']:.0f} runs/s | first event "
            f"{rep['first']['first_event_p50_ms']:.1f} ms | fanout added p50 {f['added_p50_ms']:.1f} "
            f"p99 {f['added_p99_ms']:.1f} ms, {f['events']}/{f['expected_events']} events, "
            f"{f['errors']} errors, {f['events_per_s']:.0f} events/s, peak RSS {f['peak_rss_mib']:.0f} MiB, "
            f"CPU server {f['server_cpu_s']:.1f}s client {f['client_cpu_s']:.1f}s in {f['wall_s']:.1f}s",
            flush=True,
        )
        reps.append(rep)

    def metric(name: str, unit: str, part: str, key: str, **kw: Any) -> Metric:
        return Metric(name, unit, [float(r[part][key]) for r in reps], **kw)

    c = f"{cfg.clients} clients"
    metrics = {
        "runs_created_per_s": metric("runs created /s", "runs/s", "create", "runs_per_s", higher_is_better=True),
        "create_errors": metric("create errors", "count", "create", "errors"),
        "first_event_p50_ms": metric("first SSE event p50", "ms", "first", "first_event_p50_ms"),
        "first_event_p99_ms": metric("first SSE event p99", "ms", "first", "first_event_p99_ms"),
        "first_token_p50_ms": metric(f"first token p50 (ttft {cfg.ttft:g}s)", "ms", "first", "first_token_p50_ms"),
        "first_token_p99_ms": metric(f"first token p99 (ttft {cfg.ttft:g}s)", "ms", "first", "first_token_p99_ms"),
        "added_p50_ms": metric(f"token added latency p50, {c}", "ms", "fanout", "added_p50_ms"),
        "added_p99_ms": metric(
            f"token added latency p99, {c}", "ms", "fanout", "added_p99_ms", target=TARGET_ADDED_P99_MS
        ),
        "start_p99_ms": metric(f"request to run start p99, {c}", "ms", "fanout", "start_p99_ms"),
        "events": metric("token events received", "count", "fanout", "events"),
        "errors": metric("stream errors", "count", "fanout", "errors"),
        "incomplete": metric("streams missing tokens", "count", "fanout", "incomplete"),
        "events_per_s": metric("token events /s (wall)", "events/s", "fanout", "events_per_s"),
        "peak_rss_mib": metric("API peak RSS (+children)", "MiB", "fanout", "peak_rss_mib"),
        "idle_rss_mib": Metric("API RSS at start", "MiB", [float(r["idle_rss_mib"]) for r in reps]),
        "server_cpu_s": metric("API CPU during fanout", "s", "fanout", "server_cpu_s"),
        "client_cpu_s": metric("client CPU during fanout", "s", "fanout", "client_cpu_s"),
    }
    notes: list[str] = []
    if cfg.clients < 1000:
        notes.append(f"ran {cfg.clients} clients, not 1,000 ({'--quick' if args.quick else '--clients'})")
    notes.append("added latency = token arrival at the client - the moment the model produced it (same host clock)")
    notes.extend(failures)
    rows: list[tuple[str, Metric | str]] = [("server", m) for m in metrics.values()]
    rows.extend(("server", f"note: {n}") for n in notes)
    print_table("API server benchmark (one `corral serve` process)", rows)
    if not args.no_write:
        path = write_results(
            "server",
            {
                "benchmark": "server",
                "machine": info,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "config": {**cfg.__dict__, "concurrency": 1000, "store": "sqlite", "quick": args.quick},
                "metrics": {k: m.to_json() for k, m in metrics.items()},
                "repetitions": reps,
                "notes": notes,
            },
        )
        print(f"\nwrote {path.relative_to(BENCH_DIR.parent)}")
    return 1 if not reps else 0


if __name__ == "__main__":
    sys.exit(main())
