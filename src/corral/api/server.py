"""The API app factory: `create_api(app)` gives a FastAPI application speaking the LangGraph
Server / Agent Protocol API in front of a Corral App, with an in-process worker by default."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..app import App
from ..telemetry.metrics import Metrics
from . import errors
from .convert import InvalidInput
from .routes import assistants, ops, runs, store, threads
from .sse import RAW_SEND
from .state import ApiState

log = logging.getLogger("corral.api")


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413 before any route sees them, whether the
    client declared the length or streams it in chunks (the body is read, at most `limit` bytes)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                if message.get("more_body", False):
                    await self._discard(receive, budget=8 * self.limit)
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _discard(receive: Receive, budget: int) -> None:
        """Read (and drop) the rest of a body so the client, which sends all of it before it reads
        the answer, gets to read the 413; a body longer still is cut off by closing."""
        while budget > 0:
            message = await receive()
            budget -= len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = errors.BodyTooLarge(self.limit)
        response = JSONResponse({"detail": str(err), "error": "PayloadTooLarge"}, status_code=413)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class _Api(FastAPI):
    """FastAPI, with the server's own `send` kept in the scope (`RAW_SEND`) by an outermost layer.

    Every middleware wraps `send` in a coroutine of its own that only watches for the response's
    start; an event stream writes each of its (many) body chunks past them (see sse.StreamResponse)."""

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            scope[RAW_SEND] = send
            await inner(scope, receive, send)

        return app


async def _no_nul_in_path_or_query(request: Request) -> None:
    """Ids and query values with a NUL character can name nothing here (and PostgreSQL refuses them)."""
    for where, values in (("path", request.path_params), ("query", request.query_params)):
        for name, value in values.items():
            if "\x00" in str(value) or "\x00" in name:
                raise InvalidInput(f"{where}.{name}", "contains a NUL character")


def create_api(app: App, *, worker: bool = True, auth: bool = True, close_app: bool = True) -> FastAPI:
    """The HTTP API in front of `app`.

    `worker=True` runs a Worker in the API process (one process for development; separate
    `corral worker` processes may share the database either way). `auth=False` serves everybody
    as the settings' tenant, for tests and trusted networks only. The App is opened when the API
    starts and closed when it stops (unless `close_app=False`).
    """
    metrics = Metrics()
    state = ApiState(app=app, metrics=metrics, auth=auth, heartbeat=app.settings.sse_heartbeat_seconds)
    app.bus.add_tap(metrics.observe_event)

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        await app.open()
        task: asyncio.Task[Any] | None = None
        if worker:  # this process executes runs: it is ready once its models are
            state.models_loading = state.spawn(app.load_models(), name="corral-load-models")
            state.worker = w = app.worker()
            metrics.watch_worker(lambda: (len(w.active), w.concurrency))
            task = asyncio.create_task(w.run(), name="corral-api-worker")
        log.info("corral API: agents %s, worker %s", ", ".join(app.agent_names()), "on" if worker else "off")
        try:
            yield
        finally:
            await state.stop_background()
            if task is not None and state.worker is not None:
                state.worker.stop()
                await task
            if close_app:
                await app.close()

    api = _Api(
        title="Corral",
        version=__version__,
        description="A durable runtime for LLM agents, speaking the LangGraph Server / Agent Protocol API.",
        lifespan=lifespan,
        dependencies=[Depends(_no_nul_in_path_or_query)],
    )
    api.state.corral = state
    errors.install(api)
    for module in (runs, threads, assistants, store, ops):  # the busiest first: routes are tried in order
        api.include_router(module.router)
    api.add_middleware(BodyLimit, limit=app.settings.max_body_bytes)
    return api
