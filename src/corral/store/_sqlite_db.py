"""The thread that owns a process's SQLite connection and commits queued operations in groups.

While it commits, new operations queue up; it then runs the whole queue in one transaction (group
commit), so 100 concurrent runs cost a handful of commits, not 100, and the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, StoreError

_BATCH_MAX = 512
_STOP = object()

Op = Callable[[sqlite3.Connection], Any]


def sqlite_path(url: str) -> str:
    """`sqlite:///relative.db`, `sqlite:////abs/path.db` or `sqlite://:memory:` to a path."""
    if not url.startswith("sqlite://"):
        raise ConfigError(f"not a sqlite URL: {url!r}")
    rest = url[len("sqlite://") :]
    if rest in (":memory:", "/:memory:"):
        raise ConfigError("an in-memory SQLite database cannot be shared; use a file path")
    if not rest.startswith("/"):
        raise ConfigError(f"expected sqlite:///path, got {url!r}")
    path = rest[1:]
    if not path:
        raise ConfigError(f"no file path in {url!r}")
    return path


class _DbThread:
    """The thread that owns the connection and commits queued operations in groups."""

    def __init__(self, path: str, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="corral-sqlite", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.batches = 0
        self.ops = 0

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise StoreError(f"cannot open SQLite database {self._path}: {self._error}") from self._error

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def submit(self, op: Op, write: bool = True) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put((op, write, fut, loop))
        return fut

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # noqa: BLE001 - reported to the opener
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < _BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [item for item in batch if item is not _STOP]
            if batch:
                self._run(conn, batch)
        conn.close()

    def _run(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        self.batches += 1
        self.ops += len(batch)
        write = any(item[1] for item in batch)
        try:
            outcomes = self._transaction(conn, [item[0] for item in batch], write)
        except BaseException:  # noqa: BLE001 - an op failed (or was fenced): run each alone so only it fails
            outcomes = []
            for op, w, _, _ in batch:
                try:
                    outcomes.extend(self._transaction(conn, [op], w))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller, never kills the thread
                    outcomes.append((False, _translate(exc)))
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, _, fut, loop), (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed; nobody is waiting any more
                pass

    @staticmethod
    def _transaction(conn: sqlite3.Connection, ops: list[Op], write: bool) -> list[tuple[bool, Any]]:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            results = [(True, op(conn)) for op in ops]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results


def _translate(exc: BaseException) -> BaseException:
    """sqlite3's errors become StoreError here, at the boundary; Corral's own pass through."""
    if isinstance(exc, sqlite3.Error):
        err = StoreError(f"SQLite: {exc}")
        err.__cause__ = exc
        return err
    return exc


def _resolve(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in items:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
