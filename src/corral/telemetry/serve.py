"""A minimal HTTP listener for processes that have no API: `corral worker --metrics-port` serves
`/metrics` (Prometheus text) and `/ok` (liveness) from the worker's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from .metrics import Metrics

if TYPE_CHECKING:
    from ..app import App

_MAX_REQUEST = 8192


async def serve_metrics(app: App, metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """Start serving; the caller closes the returned server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path, _ = head[:_MAX_REQUEST].split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method != "GET":
                status, body, kind = "405 Method Not Allowed", b"only GET\n", "text/plain"
            elif path.split("?")[0] == "/metrics":
                stats = await app.store.stats(time.time())
                status, body, kind = "200 OK", metrics.render(stats), metrics.content_type
            elif path.split("?")[0] == "/ok":
                status, body, kind = "200 OK", b'{"ok":true}', "application/json"
            else:
                status, body, kind = "404 Not Found", b"try /metrics or /ok\n", "text/plain"
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, body, kind = "400 Bad Request", b"bad request\n", "text/plain"
        except Exception as exc:  # noqa: BLE001 - the store is unreachable: say so, keep serving
            status, body, kind = "503 Service Unavailable", f"{type(exc).__name__}\n".encode(), "text/plain"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)
