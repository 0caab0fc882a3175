"""Server-sent events on the wire, and long responses that must notice a client leaving.

`StreamResponse` is a plain ASGI response that writes an async iterator of chunks while it listens
for the client's disconnect, so a stream that loses its client stops at once and its cleanup
(`on_close(disconnected)`) runs deterministically, not when the generator is garbage-collected.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import StoreError
from ..store.base import Event
from .state import ApiState
from .streams import PRELUDE, Mapper, Parked, RawJSON, follow, sse_id

HEARTBEAT = b": heartbeat\n\n"
RAW_SEND = "corral.raw_send"  # where api.server keeps the server's own `send` in the scope


def encode(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One event: an `id:` line, an `event:` line and exactly one `data:` line of JSON."""
    return _text(event, data, event_id).encode()


def _text(event: str, data: Any, event_id: int | None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = (
        data if isinstance(data, RawJSON) else json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    )
    return f"{head}event: {event}\ndata: {body}\n\n"


class BodyWriter:
    """Writes a response's body chunks in order, from its own task (`write`) or synchronously
    from whatever code has a chunk ready (`write_now`: a token published by a runner).

    `write_now` drives the server's `send` coroutine by hand: it completes at once unless the
    client reads too slowly (flow control), and then a task finishes it while later chunks wait.
    """

    def __init__(self) -> None:
        self._send: Send | None = None
        self._busy = False  # a `write` is under way
        self._pending: asyncio.Task[None] | None = None  # a `write_now` that had to wait
        self._error: BaseException | None = None

    def bind(self, send: Send) -> None:
        self._send = send

    def write_now(self, chunk: bytes) -> bool:
        """Write `chunk` now if nothing else is being written; False (nothing done) otherwise."""
        if self._send is None or self._busy or self._pending is not None or self._error is not None:
            return False
        coro = self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return True
        except Exception as exc:  # noqa: BLE001 - the next `write` raises it, in the stream's task
            self._error = exc
            return True
        self._pending = asyncio.get_running_loop().create_task(self._finish(coro, waiting_on))
        return True

    async def _finish(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        """Drive `coro`, suspended on `waiting_on`, to its end, as a task would have."""
        try:
            while True:
                try:
                    if waiting_on is None:
                        await asyncio.sleep(0)  # a bare yield: run again at the next turn
                    elif asyncio.isfuture(waiting_on):
                        waiting_on._asyncio_future_blocking = False  # taken over, as Task.__step does
                        await waiting_on
                    else:
                        raise RuntimeError(f"the ASGI server's send waited on {waiting_on!r}, not an asyncio future")
                except BaseException as exc:  # noqa: BLE001 - handed to the coroutine, as a task would
                    waiting_on = coro.throw(exc)
                else:
                    waiting_on = coro.send(None)
        except StopIteration:
            pass
        except Exception as exc:  # noqa: BLE001 - the next `write` raises it, in the stream's task
            self._error = exc
        finally:
            self._pending = None

    async def write(self, chunk: bytes, *, more: bool = True) -> None:
        """Write `chunk` after everything written before it."""
        assert self._send is not None, "bind() first"
        self._busy = True
        try:
            if self._pending is not None:
                await asyncio.shield(self._pending)
            if self._error is not None:
                raise self._error
            await self._send({"type": "http.response.body", "body": chunk, "more_body": more})
        finally:
            self._busy = False

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.gather(self._pending, return_exceptions=True)


class StreamResponse(Response):
    """Streams `chunks`; stops when they end or the client disconnects, then calls `on_close`.
    With a `writer`, whatever else holds the writer may also write to the body (in order)."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        media_type: str,
        headers: dict[str, str] | None = None,
        on_close: Callable[[bool], Awaitable[None]] | None = None,
        writer: BodyWriter | None = None,
    ) -> None:
        self.chunks = chunks
        self.media_type = media_type
        self.on_close = on_close
        self.writer = writer or BodyWriter()
        self.status_code = 200
        self.background = None
        self.init_headers(headers or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = self.raw_headers
        disconnected = False
        body = self.writer

        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            # The body past the middlewares' wrappers of `send` (they only watch for the start).
            body.bind(scope.get(RAW_SEND, send))
            async for chunk in self.chunks:
                await body.write(chunk)
            await body.write(b"", more=False)

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        writer = asyncio.create_task(pump())
        listener = asyncio.create_task(listen())
        try:
            await asyncio.wait({writer, listener}, return_when=asyncio.FIRST_COMPLETED)
            if not writer.done():
                disconnected = True
            elif (exc := writer.exception()) is not None:
                if not isinstance(exc, OSError):
                    raise exc
                disconnected = True  # the client went away while we wrote
        finally:
            for task in (writer, listener):
                task.cancel()
            await asyncio.gather(writer, listener, return_exceptions=True)
            await self.chunks.aclose()  # type: ignore[attr-defined]
            await body.close()
            if self.on_close is not None:
                await self.on_close(disconnected)


def stream_headers(thread_id: str, run_id: str) -> dict[str, str]:
    """Where the run is (`Content-Location`) and where to reconnect to it (`Location`, same origin)."""
    base = f"/threads/{thread_id}/runs/{run_id}"
    return {
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",
        "Content-Location": base,
        "Location": f"{base}/stream",
    }


async def run_events(
    state: ApiState,
    mapper: Mapper,
    *,
    after: int,
    skip_to: int = 0,
    prelude: bool = False,
    writer: BodyWriter | None = None,
) -> AsyncIterator[bytes]:
    """The SSE bytes of one run from Corral event `after` on, skipping SSE ids up to `skip_to`.

    With `prelude`, the stream first says metadata and values at the two positions kept for
    that after event `after` (a resumed run's stream). With the response's `writer`, live tokens
    and custom events are written to it the moment they are published (see RunWatch), the rest
    is yielded."""
    metrics = state.metrics
    sent = 0  # SSE events written and not yet counted: the metric takes a lock per call

    def count() -> None:
        nonlocal sent
        if sent:
            metrics.sse_events.inc(sent)
            sent = 0

    def out(event_id: int, parts: list[tuple[str, Any]], first: int = 0) -> bytes:
        """The SSE text of one Corral event's parts, those with ids past `skip_to`."""
        nonlocal sent
        texts = []
        for position, part in enumerate(parts, first):
            if (number := sse_id(event_id, position)) > skip_to:
                texts.append(_text(part[0], part[1], number))
        sent += len(texts)
        return "".join(texts).encode()

    last = after

    def direct(event: Event) -> bool:
        """A token or custom event, written at once (the path of every streamed token)."""
        nonlocal last
        parts = mapper.map_now(event)
        if parts is None or writer is None:
            return False
        if (chunk := out(event.id, parts[:PRELUDE])) and not writer.write_now(chunk):
            return False
        if sent >= 256:
            count()
        last = event.id
        return True

    if prelude and (chunk := out(after, (await mapper.start(mapper.run.attempt))[:2], PRELUDE)):
        yield chunk
    try:
        async for item in follow(state.app, mapper.run.id, after, state.heartbeat, direct if writer else None):
            count()
            if item is None:
                yield HEARTBEAT
            elif isinstance(item, Parked):
                if chunk := out(last, (await mapper.parked(item))[:PRELUDE]):
                    yield chunk
            else:  # a batch of events: one write
                chunks = [out(event.id, (await mapper.map(event))[:PRELUDE]) for event in item]
                last = item[-1].id
                if chunk := b"".join(chunks):
                    yield chunk
    except StoreError as exc:  # the store failed mid-stream: say so, the client may reconnect
        yield encode("error", {"error": type(exc).__name__, "message": str(exc)})
    finally:
        count()


async def json_with_heartbeats(state: ApiState, result: Awaitable[Any]) -> AsyncIterator[bytes]:
    """A JSON body that may take long: newlines (JSON whitespace) keep the connection alive until
    the value is ready. Errors after the headers are sent end up in the body as `__error__`."""
    task = asyncio.ensure_future(result)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=state.heartbeat)
            if done:
                break
            yield b"\n"
        try:
            value = task.result()
        except StoreError as exc:
            value = {"__error__": {"error": type(exc).__name__, "message": str(exc)}}
        yield json.dumps(value, ensure_ascii=False, default=str).encode()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
