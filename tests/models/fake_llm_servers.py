"""Fault-injecting LLM servers on 127.0.0.1 for the provider and router tests.

A raw asyncio HTTP/1.1 server (one request per connection, chunked streaming) so the bytes on
the wire are exactly what a test asks for: status errors, 429 with Retry-After, hangs, streams
cut mid-way without the chunked terminator, repeated chunks, garbage. Behaviours are queued per
server and consumed one per request; when the queue is empty the server's `default` answers.
`FakeOpenAI` speaks chat completions (SSE `data:` lines, `[DONE]`); `FakeAnthropic` speaks the
Messages API event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


# behaviours -------------------------------------------------------------------------------
@dataclass
class Reply:
    """A successful answer: text in `chunks` (default: word by word), optional tool calls as
    (name, arguments) — streamed as argument fragments — usage and finish reason."""

    text: str = "hello from the fake"
    tool_calls: Sequence[tuple[str, dict[str, Any]]] = ()
    chunks: Sequence[str] | None = None
    usage: tuple[int, int] | None = (11, 7)
    finish: str | None = None
    delay: float = 0.0  # before the headers
    chunk_delay: float = 0.0

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        words = self.text.split(" ")
        return [w + " " for w in words[:-1]] + [words[-1]] if self.text else []


@dataclass
class Status:
    code: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Accept the request and never answer (`after_headers`: send 200 headers, then nothing)."""

    after_headers: bool = False


@dataclass
class Cut:
    """Stream `after` text chunks, then drop the connection without ending the chunked body."""

    after: int = 2
    text: str = "one two three four five"


@dataclass
class Repeat:
    """Stream the same chunk `times` times, then finish normally."""

    chunk: str = "again "
    times: int = 200


@dataclass
class Garbage:
    """A stream whose first event is not JSON."""


@dataclass
class Truncated:
    """Stream `after` chunks, then end the body cleanly but without finishing the answer."""

    after: int = 2


Behaviour = Reply | Status | Hang | Cut | Repeat | Garbage | Truncated


class _Writer:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.w = writer

    async def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        head = {"content-type": "application/json", "content-length": str(len(body)), "connection": "close"}
        head.update(headers or {})
        self.w.write(_head(status, head) + body)
        await self.w.drain()

    async def start_stream(self) -> None:
        head = {"content-type": "text/event-stream", "transfer-encoding": "chunked", "connection": "close"}
        self.w.write(_head(200, head))
        await self.w.drain()

    async def chunk(self, data: str) -> None:
        raw = data.encode()
        self.w.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        await self.w.drain()

    async def end(self) -> None:
        self.w.write(b"0\r\n\r\n")
        await self.w.drain()

    def abort(self) -> None:
        self.w.transport.abort()


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class LoopbackServer:
    """The HTTP plumbing; subclasses answer one behaviour in their wire format."""

    def __init__(self, default: Behaviour | None = None) -> None:
        self.default: Behaviour = default or Reply()
        self.script: list[Behaviour] = []
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def queue(self, *behaviours: Behaviour) -> None:
        self.script.extend(behaviours)

    async def __aenter__(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await self._read(reader)
            if request is None:
                return
            self.requests.append(request)
            behaviour = self.script.pop(0) if self.script else self.default
            await self.answer(request, behaviour, _Writer(writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> Request | None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Request(method, path, headers, body)

    async def answer(self, request: Request, behaviour: Behaviour, out: _Writer) -> None:
        if isinstance(behaviour, Status):
            body = behaviour.body if behaviour.body is not None else {"error": {"message": f"status {behaviour.code}"}}
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            await out.send(behaviour.code, raw, behaviour.headers)
            return
        if isinstance(behaviour, Hang):
            if behaviour.after_headers:
                await out.start_stream()
            await asyncio.Event().wait()
        streaming = bool((request.json or {}).get("stream"))
        if isinstance(behaviour, Reply) and behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if not streaming:
            reply = behaviour if isinstance(behaviour, Reply) else Reply()
            await out.send(200, json.dumps(self.whole(request, reply)).encode())
            return
        await out.start_stream()
        await self.stream(request, behaviour, out)

    def whole(self, request: Request, reply: Reply) -> dict[str, Any]:
        raise NotImplementedError

    async def stream(self, request: Request, behaviour: Behaviour, out: _Writer) -> None:
        raise NotImplementedError


class FakeOpenAI(LoopbackServer):
    """POST /v1/chat/completions."""

    def whole(self, request: Request, reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                for i, (n, a) in enumerate(reply.tool_calls)
            ]
        out: dict[str, Any] = {
            "id": "cmpl-1",
            "model": "fake-model",
            "choices": [{"index": 0, "message": message, "finish_reason": _oa_finish(reply)}],
        }
        if reply.usage:
            out["usage"] = {"prompt_tokens": reply.usage[0], "completion_tokens": reply.usage[1]}
        return out

    async def stream(self, request: Request, behaviour: Behaviour, out: _Writer) -> None:
        def event(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return "data: " + json.dumps({"id": "c", "model": "fake-model", "choices": [choice]}) + "\n\n"

        if isinstance(behaviour, Garbage):
            await out.chunk("data: {not json\n\n")
            await out.end()
            return
        if isinstance(behaviour, Cut):
            await out.chunk(event({"role": "assistant"}))
            for word in behaviour.text.split(" ")[: behaviour.after]:
                await out.chunk(event({"content": word + " "}))
            await asyncio.sleep(0.01)
            out.abort()
            return
        if isinstance(behaviour, Truncated):
            for word in ["a ", "b ", "c ", "d "][: behaviour.after]:
                await out.chunk(event({"content": word}))
            await out.end()
            return
        if isinstance(behaviour, Repeat):
            for _ in range(behaviour.times):
                await out.chunk(event({"content": behaviour.chunk}))
            await out.chunk(event({}, "stop"))
            await out.chunk("data: [DONE]\n\n")
            await out.end()
            return
        assert isinstance(behaviour, Reply)
        await out.chunk(": keep-alive comment\n\n")
        await out.chunk(event({"role": "assistant"}))
        for piece in behaviour.pieces():
            if behaviour.chunk_delay:
                await asyncio.sleep(behaviour.chunk_delay)
            await out.chunk(event({"content": piece}))
        for i, (name, args) in enumerate(behaviour.tool_calls):
            raw = json.dumps(args)
            third = max(1, len(raw) // 3)
            frags = [raw[:third], raw[third : 2 * third], raw[2 * third :]]
            first = {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": ""}}
            await out.chunk(event({"tool_calls": [first]}))
            for frag in frags:
                await out.chunk(event({"tool_calls": [{"index": i, "function": {"arguments": frag}}]}))
        await out.chunk(event({}, _oa_finish(behaviour)))
        if behaviour.usage and ((request.json or {}).get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": behaviour.usage[0], "completion_tokens": behaviour.usage[1]}
            await out.chunk("data: " + json.dumps({"id": "c", "choices": [], "usage": usage}) + "\n\n")
        await out.chunk("data: [DONE]\n\n")
        await out.end()


def _oa_finish(reply: Reply) -> str:
    return reply.finish or ("tool_calls" if reply.tool_calls else "stop")


class FakeAnthropic(LoopbackServer):
    """POST /v1/messages, with the Messages API's event stream."""

    def whole(self, request: Request, reply: Reply) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        content += [
            {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": a} for i, (n, a) in enumerate(reply.tool_calls)
        ]
        usage = reply.usage or (0, 0)
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "fake-claude",
            "content": content,
            "stop_reason": reply.finish or ("tool_use" if reply.tool_calls else "end_turn"),
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }

    async def stream(self, request: Request, behaviour: Any, out: _Writer) -> None:
        async def send(kind: str, data: dict[str, Any]) -> None:
            await out.chunk(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n")

        if isinstance(behaviour, AnthropicError):
            start = {"id": "m", "type": "message", "role": "assistant", "model": "fake-claude", "content": []}
            await send("message_start", {"message": {**start, "usage": {"input_tokens": 3, "output_tokens": 1}}})
            if behaviour.after:
                await send("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
                for n in range(behaviour.after):
                    await send("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f"w{n} "}})
            await send("error", {"error": {"type": behaviour.kind, "message": "Overloaded"}})
            await out.end()
            return
        reply = behaviour if isinstance(behaviour, Reply) else Reply(text="one two three four")
        usage = reply.usage or (0, 0)
        start = {"id": "msg_1", "type": "message", "role": "assistant", "model": "fake-claude", "content": []}
        start["usage"] = {"input_tokens": usage[0], "output_tokens": 1}
        await send("message_start", {"message": start})
        await send("ping", {})
        index = 0
        pieces = reply.pieces()
        if isinstance(behaviour, Repeat):
            pieces = [behaviour.chunk] * behaviour.times
        if isinstance(behaviour, Garbage):
            await out.chunk("event: content_block_delta\ndata: {oops\n\n")
            await out.end()
            return
        if pieces:
            await send("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            for n, piece in enumerate(pieces):
                if isinstance(behaviour, Cut) and n == behaviour.after:
                    out.abort()
                    return
                await send("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
            await send("content_block_stop", {"index": 0})
            index = 1
        if isinstance(behaviour, Truncated):
            await out.end()
            return
        for i, (name, args) in enumerate(reply.tool_calls):
            block = {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}}
            await send("content_block_start", {"index": index, "content_block": block})
            raw = json.dumps(args)
            half = len(raw) // 2
            for frag in (raw[:half], raw[half:]):
                delta = {"type": "input_json_delta", "partial_json": frag}
                await send("content_block_delta", {"index": index, "delta": delta})
            await send("content_block_stop", {"index": index})
            index += 1
        stop = reply.finish or ("tool_use" if reply.tool_calls else "end_turn")
        await send("message_delta", {"delta": {"stop_reason": stop}, "usage": {"output_tokens": usage[1]}})
        await send("message_stop", {})
        await out.end()


@dataclass
class AnthropicError:
    """A stream that sends `after` text deltas, then an `error` event of `kind`."""

    kind: str = "overloaded_error"
    after: int = 0


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
