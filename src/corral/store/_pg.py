"""PostgreSQL plumbing under the store: URL options, the connection pool, the one boundary
where psycopg's errors are retried or translated, the notification listener, and migrations."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import select
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolClosed

from .._aio import woken
from ..errors import ConfigError, StoreError
from .sql import load_migrations, load_queries

Q = load_queries("postgres")
log = logging.getLogger("corral.store.postgres")

Conn: TypeAlias = psycopg.AsyncConnection[DictRow]
T = TypeVar("T")

TOPICS = frozenset({"run", "message", "cancel"})
MISSING: Any = object()  # what a `verify` returns when the write it checks did not land
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")
_OPTIONS = ("schema", "pool_min_size", "pool_max_size")
_PING_SECONDS = 60.0  # the listener's check that its connection is alive when nothing arrives


@dataclass(frozen=True, slots=True)
class PgOptions:
    """What a postgresql:// URL says beyond libpq's own parameters."""

    conninfo: str  # the URL libpq sees: our options removed, defaults added
    schema: str | None
    min_size: int
    max_size: int


def parse_url(url: str) -> PgOptions:
    """Split Corral's options out of a URL: `schema` (tables live there; created if missing),
    `pool_min_size` and `pool_max_size`. Everything else goes to libpq unchanged."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"not a PostgreSQL URL: {parts.scheme}://...")
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OPTIONS}
    rest = [(k, v) for k, v in query if k not in _OPTIONS]
    given = {k for k, _ in rest}
    # Defaults the URL may override: a name operators see in pg_stat_activity, a bounded connect,
    # and keepalives that find a connection a network silently dropped in a minute, not hours.
    defaults = {
        "application_name": "corral",
        "connect_timeout": "10",
        "keepalives_idle": "30",
        "keepalives_interval": "10",
        "keepalives_count": "3",
    }
    rest += [(k, v) for k, v in defaults.items() if k not in given]
    schema = ours.get("schema") or None
    if schema is not None and not _SCHEMA.match(schema):
        raise ConfigError(f"schema={schema!r}: use lowercase letters, digits and _ (at most 50)")
    try:
        min_size = int(ours.get("pool_min_size", "1"))
        max_size = int(ours.get("pool_max_size", "10"))
    except ValueError as exc:
        raise ConfigError(f"pool_min_size and pool_max_size must be integers: {exc}") from exc
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ConfigError(f"need 0 <= pool_min_size <= pool_max_size, pool_max_size >= 1; got {min_size}, {max_size}")
    # Built by hand: urlunsplit drops the "//" of a URL with no host (a Unix socket, postgresql:///db).
    conninfo = f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(rest)}"
    return PgOptions(conninfo, schema, min_size, max_size)


class MigrationState(StrEnum):
    APPLIED = "applied"
    PENDING = "pending"
    CHANGED = "changed"  # applied, but the file now differs from what was applied
    UNKNOWN = "unknown"  # applied by a newer version of Corral: this code does not have it


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    state: MigrationState
    applied_at: float | None = None


def transient(exc: psycopg.Error) -> bool:
    """A failure that another attempt, on another connection, may not meet: a lost connection,
    a server restarting, a serialization failure or deadlock (rolled back)."""
    if isinstance(exc, (psycopg.errors.QueryCanceled, PoolClosed)):
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.errors.TransactionRollback))


async def alive(conn: Conn) -> bool:
    """Whether a pooled connection is still usable, found without a round trip in the usual case.

    An idle connection has nothing to read unless the server hung up or sent an error (a
    terminated backend, a restart), so only a readable socket costs a check. This replaces the
    pool's own `check`, which costs a round trip per checkout and, worse, backs off about a
    second per dead connection, so a pool emptied by a restart would stall every caller.
    """
    if conn.closed or conn.broken:
        return False
    # poll, not select: select() refuses descriptors above 1024, which an API process holding a
    # thousand client sockets gives its newer connections.
    poller = select.poll()
    try:
        poller.register(conn.fileno(), select.POLLIN)
        readable = poller.poll(0)
    except (OSError, ValueError, psycopg.Error):
        return False
    if not readable:
        return True
    try:
        await conn.execute("")
    except psycopg.Error:
        return False
    return True


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def one(conn: Conn, query: str, params: dict[str, Any] | None = None) -> DictRow | None:
    cur = await conn.execute(query, params)  # type: ignore[arg-type]  # queries come from the .sql file
    return await cur.fetchone()


async def fetch_all(conn: Conn, query: str | sql.Composed, params: dict[str, Any] | None = None) -> list[DictRow]:
    cur = await conn.execute(query, params)  # type: ignore[arg-type]
    return await cur.fetchall()


class Database:
    """The pool, the listener and the retry boundary of one PostgresStore.

    `wake(topic)` is called when another process sent a notification, and for every topic after
    the listener reconnects (whatever was sent meanwhile is lost); `events(run_id, changed)` when
    another process's notification names a run whose events it wrote (`changed`: a topic other
    than "events", so its status may have changed too).
    """

    def __init__(
        self,
        options: PgOptions,
        retry_seconds: float,
        wake: Callable[[str], None],
        events: Callable[[str, bool], None],
    ) -> None:
        self.options = options
        self.schema = options.schema
        self.retry_seconds = retry_seconds
        self.channel = f"corral_{self.schema}" if self.schema else "corral"
        self.lock_key = f"corral:{self.schema or ''}"  # advisory locks: one set per schema
        self._wake = wake
        self._events = events
        self._sender = ""
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self, sender: str) -> None:
        """Migrate, fill the pool and start listening; `sender` marks this store's own notifications."""
        if self._closed:
            raise StoreError("this store was closed; create a new one")
        if self._pool is not None:
            return
        self._sender = sender
        await self.upgrade()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.options.conninfo,
            min_size=self.options.min_size,
            max_size=self.options.max_size,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=self._configure,
            timeout=self.retry_seconds,
            name="corral-pg",  # psycopg_pool names its tasks after it: corral-pg-worker-N
        )
        try:
            await pool.open(wait=True, timeout=self.retry_seconds)
        except psycopg.Error as exc:
            await pool.close()
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        self._pool = pool
        listening = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(listening), name="corral-pg-listener")
        if not await woken(listening, self.retry_seconds):
            log.warning("not listening for notifications yet; workers poll until the listener connects")

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _configure(self, conn: Conn) -> None:
        await conn.execute(Q["session_settings"])
        if self.schema:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    def note(self, topic: str, run_id: str | None = None) -> dict[str, str]:
        """The parameters of the `notify` query for `topic`, naming the run whose events it wrote."""
        payload = f"{topic} {self._sender}" if run_id is None else f"{topic} {self._sender} {run_id}"
        return {"channel": self.channel, "payload": payload}

    async def run(
        self,
        what: str,
        op: Callable[[Conn], Awaitable[T]],
        *,
        write: bool = True,
        idempotent: bool = False,
        verify: Callable[[Conn], Awaitable[Any]] | None = None,
        single_statement: bool = False,
    ) -> T:
        """Run `op` (in a transaction when `write`) and translate psycopg's errors.

        A transient failure before COMMIT was sent changed nothing, so `op` runs again on another
        connection. A failure during COMMIT leaves the outcome unknown: `op` runs again only if it
        is idempotent, or if `verify` (which returns MISSING when the write did not land) says
        so; otherwise StoreError, and the caller abandons the attempt, whose lease then expires.
        """
        if self._pool is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open; call open() first")
        pool = self._pool
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.02
        while True:
            committing = False
            try:
                async with pool.connection(timeout=max(0.1, deadline - time.monotonic())) as conn:
                    if not await alive(conn):
                        if time.monotonic() > deadline:
                            raise StoreError(f"PostgreSQL {what}: no live connection within {self.retry_seconds}s")
                        continue  # dropped by the server: the pool discards it; take the next one now
                    if not write:
                        return await op(conn)
                    if single_statement:
                        # One statement is atomic on its own (autocommit): no BEGIN and COMMIT round
                        # trips. A failure while it runs leaves its outcome as unknown as a failed COMMIT.
                        committing = True
                        return await op(conn)
                    async with conn.transaction():
                        result = await op(conn)
                        committing = True
                    return result
            except psycopg.Error as exc:
                if not transient(exc) or time.monotonic() + delay > deadline:
                    raise StoreError(f"PostgreSQL {what} failed: {exc}") from exc
                if committing and not idempotent:
                    if verify is None:
                        raise StoreError(
                            f"PostgreSQL {what}: the connection failed during COMMIT, so whether it was "
                            f"applied is unknown: {exc}"
                        ) from exc
                    found = await self.run(f"{what} (verify)", verify, write=False)
                    if found is not MISSING:
                        return found  # type: ignore[no-any-return]
                log.info("PostgreSQL %s: %s; retrying", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def direct(self, what: str, op: Callable[[Conn], Awaitable[T]]) -> T:
        """Run an idempotent `op` on a connection of its own (migrations work without a pool)."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.options.conninfo, autocommit=True, row_factory=dict_row
                )
                async with conn:
                    await self._configure(conn)
                    return await op(conn)
            except psycopg.Error as exc:
                if not transient(exc) or time.monotonic() + delay > deadline:
                    raise StoreError(f"PostgreSQL {what} failed: {exc}") from exc
                log.info("PostgreSQL %s: %s; retrying", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _listen(self, listening: asyncio.Event) -> None:
        """Relay NOTIFYs from other processes to this process's listeners, reconnecting forever."""
        delay, connected_before = 0.1, False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.options.conninfo, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    listening.set()
                    if connected_before:  # what was sent while we were away is lost: look now
                        for topic in sorted(TOPICS):
                            self._wake(topic)
                    connected_before, delay = True, 0.1
                    while True:
                        async for note in conn.notifies(timeout=_PING_SECONDS):
                            self._heard(note.payload)
                        await conn.execute("SELECT 1")  # a silently dead connection fails here
            except psycopg.Error as exc:
                listening.clear()
                log.warning("notification listener: %s; reconnecting in %.1fs (workers poll meanwhile)", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _heard(self, payload: str) -> None:
        """A notification: `topic sender [run_id]`; this store's own are already known here."""
        topic, _, rest = payload.partition(" ")
        sender, _, run_id = rest.partition(" ")
        if sender == self._sender:
            return
        if topic in TOPICS:
            self._wake(topic)
        if run_id:
            self._events(run_id, topic != "events")

    # migrations ----------------------------------------------------------------------------
    async def upgrade(self) -> list[int]:
        """Apply the pending migrations, each in its own transaction, under an advisory lock so
        that processes starting together apply each one once. Returns the versions applied."""

        async def op(conn: Conn) -> list[int]:
            await conn.execute(Q["migration_lock"], {"key": self.lock_key})
            try:
                if self.schema and await one(conn, Q["schema_exists"], {"schema": self.schema}) is None:
                    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
                await conn.execute(Q["create_migrations_table"])
                applied = {r["version"]: r for r in await fetch_all(conn, Q["applied_migrations"])}
                done = []
                for version, name, text in load_migrations("postgres"):
                    if version in applied:
                        if applied[version]["checksum"] != checksum(text):
                            log.warning("migration %s changed after it was applied", name)
                        continue
                    async with conn.transaction():
                        await conn.execute(text)  # type: ignore[arg-type]  # a migration file: no parameters
                        await conn.execute(
                            Q["record_migration"], {"version": version, "name": name, "checksum": checksum(text)}
                        )
                    log.info("applied migration %s", name)
                    done.append(version)
                return done
            finally:
                if not conn.closed:
                    await conn.execute(Q["migration_unlock"], {"key": self.lock_key})

        return await self.direct("upgrade", op)

    async def migration_status(self) -> list[Migration]:
        """Every migration this code knows or the database has applied, in order, with its state."""

        async def op(conn: Conn) -> list[Migration]:
            present = await one(conn, Q["migrations_table_exists"])
            rows = await fetch_all(conn, Q["applied_migrations"]) if present and present["present"] else []
            applied = {r["version"]: r for r in rows}
            known = {version: (name, text) for version, name, text in load_migrations("postgres")}
            out = []
            for version in sorted(applied.keys() | known.keys()):
                row = applied.get(version)
                if row is None:
                    out.append(Migration(version, known[version][0], MigrationState.PENDING))
                    continue
                if version not in known:
                    state = MigrationState.UNKNOWN
                elif row["checksum"] != checksum(known[version][1]):
                    state = MigrationState.CHANGED
                else:
                    state = MigrationState.APPLIED
                out.append(Migration(version, row["name"], state, row["applied_at"]))
            return out

        return await self.direct("migration status", op)
