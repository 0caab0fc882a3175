"""A real HTTP server on 127.0.0.1 for the langgraph-sdk client: uvicorn in a thread, one per test.

A module of its own, not the conftest: `from conftest import ...` finds whichever conftest was
imported last when several test folders run together."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_agents import build_app

from corral.api import create_api, create_key
from corral.config import Settings
from corral.store import open_store
from helpers import free_port


@dataclass
class Server:
    url: str
    database_url: str
    keys: dict[str, str]  # tenant -> key
    app: Any
    api: Any


def _make_keys(database_url: str, specs: dict[str, tuple[str, str, tuple[str, ...]]]) -> dict[str, str]:
    async def make() -> dict[str, str]:
        async with open_store(Settings(database_url=database_url)) as store:
            return {name: await create_key(store, t, p, r) for name, (t, p, r) in specs.items()}

    return asyncio.run(make())


def serve(database_url: str, *, worker: bool = True, **overrides: Any) -> Iterator[Server]:
    """The API (with a worker unless `worker=False`) on uvicorn in a thread; `overrides` go to
    build_app (settings, or `agents` and `models`)."""
    keys = _make_keys(
        database_url,
        {
            "a": ("tenant-a", "alice", ("support",)),
            "b": ("tenant-b", "bob", ()),
        },
    )
    app = build_app(database_url, **overrides)
    api = create_api(app, worker=worker)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="corral-test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", database_url, keys, app, api)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
