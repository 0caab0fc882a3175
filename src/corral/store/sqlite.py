"""The SQLite store: one file in WAL mode, shared by any number of processes.

All database work of a process goes through one thread that owns the connection. While it
commits, new operations queue up; it then runs the whole queue in one transaction (group commit),
so 100 concurrent runs cost a handful of commits, not 100, and the event loop never blocks on I/O.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._json import dumps, loads
from ..errors import ConfigError, Conflict, LeaseLost, RunNotFound, SessionExists, SessionNotFound, StoreError
from . import values as reducer
from .base import (
    ApiKey,
    Checkpoint,
    Claim,
    Event,
    Fence,
    Item,
    Message,
    NewRun,
    Renewal,
    RunRecord,
    RunStatus,
    SessionRecord,
    SessionStatus,
    StepKind,
    StepRecord,
    StepStatus,
    Store,
)
from .sql import load_migrations, load_queries

Q = load_queries("sqlite")
_BATCH_MAX = 512
_NS_SEP = "\x1f"
CHECKPOINTS_KEPT = 100  # per session; older ones are trimmed as new ones are written
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


def _run_record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        session_id=row["session_id"],
        tenant=row["tenant"],
        principal=row["principal"],
        roles=tuple(loads(row["roles"])),
        agent=row["agent"],
        agent_version=row["agent_version"],
        input=loads(row["input"]),
        limits=loads(row["limits"]),
        status=RunStatus(row["status"]),
        output=loads(row["output"]) if row["output"] is not None else None,
        error=loads(row["error"]) if row["error"] is not None else None,
        attempt=row["attempt"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        wake_at=row["wake_at"],
        time_used=row["time_used"],
        cancel_requested=bool(row["cancel_requested"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        metadata=loads(row["metadata"]),
    )


def _step_record(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        run_id=row["run_id"],
        seq=row["seq"],
        kind=StepKind(row["kind"]),
        name=row["name"],
        input_hash=row["input_hash"],
        status=StepStatus(row["status"]),
        result_json=row["result"],
        error=loads(row["error"]) if row["error"] is not None else None,
        attempt=row["attempt"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _step_params(step: StepRecord) -> dict[str, Any]:
    return {
        "run_id": step.run_id,
        "seq": step.seq,
        "kind": step.kind.value,
        "name": step.name,
        "input_hash": step.input_hash,
        "status": step.status.value,
        "result": step.result_json,
        "error": dumps(step.error) if step.error is not None else None,
        "attempt": step.attempt,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
    }


def _fold_run(conn: sqlite3.Connection, run_id: str, status: RunStatus, output_json: str | None, now: float) -> None:
    """Merge a finished run's input (and output, if it succeeded) into its session's values."""
    session_id, input_json = conn.execute(Q["run_input"], {"run_id": run_id}).fetchone()
    current = loads(conn.execute(Q["session_values"], {"id": session_id}).fetchone()[0])
    ok = status is RunStatus.SUCCEEDED
    update = reducer.run_update(loads(input_json), ok, loads(output_json) if ok and output_json else None)
    _write_values(
        conn, session_id, reducer.merge(current, update), run_id, {"source": "run", "status": status.value}, now
    )


def _write_values(
    conn: sqlite3.Connection,
    session_id: str,
    new_values: dict[str, Any],
    run_id: str | None,
    metadata: dict[str, Any],
    now: float,
) -> None:
    text = dumps(new_values)
    conn.execute(Q["set_session_values"], {"id": session_id, "values": text, "now": now})
    conn.execute(
        Q["insert_checkpoint"],
        {"session_id": session_id, "run_id": run_id, "values": text, "metadata": dumps(metadata), "now": now},
    )
    conn.execute(Q["trim_checkpoints"], {"session_id": session_id, "keep": CHECKPOINTS_KEPT})


def _session_record(row: sqlite3.Row) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        tenant=row["tenant"],
        principal=row["principal"],
        metadata=loads(row["metadata"]),
        values=loads(row["values"]),
        status=SessionStatus(row["session_status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _ns(namespace: tuple[str, ...]) -> str:
    return _NS_SEP.join(namespace)


def _item(row: sqlite3.Row) -> Item:
    return Item(
        tuple(row["namespace"].split(_NS_SEP)) if row["namespace"] else (),
        row["key"],
        loads(row["value"]),
        row["created_at"],
        row["updated_at"],
    )


def _contains(value: Any, pattern: Any) -> bool:
    """True when `value` holds everything in `pattern` (dicts recursively, other values equal)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and _contains(value[k], v) for k, v in pattern.items())
    return value == pattern


def _insert_events(conn: sqlite3.Connection, events: list[Event], now: float) -> None:
    if events:
        conn.executemany(Q["insert_event"], [(e.run_id, e.id, e.type, dumps(e.data), now) for e in events])


class SQLiteStore(Store):
    """Store on a SQLite file in WAL mode."""

    def __init__(self, url: str, *, synchronous: str = "NORMAL") -> None:
        super().__init__()
        self.url = url
        self.path = sqlite_path(url)
        self._synchronous = synchronous
        self._db: _DbThread | None = None
        self._closed = False

    # lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        if self._closed:
            raise StoreError("this store was closed; create a new one")
        if self._db is not None:
            return
        parent = Path(self.path).parent
        if not parent.exists():
            raise StoreError(f"the directory of the SQLite database does not exist: {parent}")
        db = _DbThread(self.path, self._synchronous)
        await asyncio.to_thread(db.start)
        self._db = db
        await self._call(self._migrate)

    async def close(self) -> None:
        self._closed = True
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.stop)

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(transactions, operations) committed so far: operations per transaction is the batching."""
        return (self._db.batches, self._db.ops) if self._db else (0, 0)

    def _call(self, op: Op, write: bool = True) -> asyncio.Future[Any]:
        if self._db is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open; call open() first")
        return self._db.submit(op, write)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> int:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        for version, _name, sql in load_migrations("sqlite"):
            if version > current:
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version}")
                current = version
        return current

    async def schema_version(self) -> int:
        return await self._call(lambda c: c.execute("PRAGMA user_version").fetchone()[0], write=False)

    # runs ----------------------------------------------------------------------------------
    async def create_run(self, run: NewRun) -> RunRecord:
        def op(conn: sqlite3.Connection) -> RunRecord:
            conn.execute(
                Q["insert_session"],
                {"id": run.session_id, "tenant": run.tenant, "principal": run.principal, "now": run.created_at},
            )
            owner = conn.execute(Q["session_tenant"], {"id": run.session_id}).fetchone()[0]
            if owner != run.tenant:
                raise SessionNotFound(run.session_id)
            row = conn.execute(
                Q["insert_run"],
                {
                    "id": run.id,
                    "session_id": run.session_id,
                    "tenant": run.tenant,
                    "principal": run.principal,
                    "roles": dumps(list(run.roles)),
                    "agent": run.agent,
                    "agent_version": run.agent_version,
                    "input": run.input_json,
                    "limits": dumps(run.limits),
                    "metadata": dumps(run.metadata),
                    "now": run.created_at,
                },
            ).fetchone()
            return _run_record(row)

        record = await self._call(op)
        self._notify("run")
        return record

    async def claim_runs(
        self, owner: str, limit: int, agents: list[str], lease_seconds: float, now: float, run_id: str | None = None
    ) -> list[Claim]:
        params = {"agents": dumps(agents), "now": now, "limit": limit, "run_id": run_id}

        def op(conn: sqlite3.Connection) -> list[Claim]:
            query = Q["claim_one"] if run_id is not None else Q["claim_candidates"]
            ids = [r[0] for r in conn.execute(query, params)]
            claims = []
            for rid in ids:
                row = conn.execute(
                    Q["claim"], {"id": rid, "owner": owner, "expires": now + lease_seconds, "now": now}
                ).fetchone()
                run = _run_record(row)
                if run.attempt > 1:
                    steps = {s.seq: s for s in map(_step_record, conn.execute(Q["journal"], {"run_id": rid}))}
                    last = conn.execute(Q["last_event_id"], {"run_id": rid}).fetchone()[0]
                else:
                    steps, last = {}, 0
                claims.append(Claim(run=run, steps=steps, last_event_id=last))
            return claims

        return await self._call(op)

    async def renew_leases(
        self, owner: str, held: list[Fence], lease_seconds: float, now: float, time_used: dict[str, float]
    ) -> Renewal:
        def op(conn: sqlite3.Connection) -> Renewal:
            lost = set()
            for f in held:
                cur = conn.execute(
                    Q["renew"],
                    {
                        "run_id": f.run_id,
                        "attempt": f.attempt,
                        "expires": now + lease_seconds,
                        "time_used": time_used.get(f.run_id, 0.0),
                    },
                )
                if cur.rowcount == 0:
                    lost.add(f.run_id)
            cancels = {r[0] for r in conn.execute(Q["cancel_flags"], {"owner": owner})}
            return Renewal(lost=frozenset(lost), cancel_requested=frozenset(cancels - lost))

        return await self._call(op)

    async def record_step(self, fence: Fence, step: StepRecord, events: list[Event]) -> None:
        params = _step_params(step)
        params["attempt"] = fence.attempt  # the write is fenced on the claim, whatever the record says

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(Q["upsert_step"], params).rowcount == 0:
                raise LeaseLost(fence.run_id, fence.attempt)
            _insert_events(conn, events, step.finished_at or step.started_at)

        await self._call(op)

    async def append_events(self, fence: Fence, events: list[Event]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(Q["fence_check"], {"run_id": fence.run_id, "attempt": fence.attempt}).fetchone() is None:
                raise LeaseLost(fence.run_id, fence.attempt)
            _insert_events(conn, events, time.time())

        if events:
            await self._call(op)

    async def park_run(
        self, fence: Fence, wake_at: float | None, time_used: float, events: list[Event], waiting_for_message: bool
    ) -> bool:
        now = time.time()

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(Q["fence_check"], {"run_id": fence.run_id, "attempt": fence.attempt}).fetchone()
            if row is None:
                raise LeaseLost(fence.run_id, fence.attempt)
            if waiting_for_message and conn.execute(Q["next_message"], {"session_id": row[0]}).fetchone():
                return False
            conn.execute(
                Q["park"],
                {
                    "run_id": fence.run_id,
                    "attempt": fence.attempt,
                    "time_used": time_used,
                    "wait_kind": "message" if waiting_for_message else "sleep",
                    "wake_at": wake_at,
                    "now": now,
                },
            )
            _insert_events(conn, events, now)
            return True

        return await self._call(op)

    async def release_run(self, fence: Fence, time_used: float, events: list[Event]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(Q["release"], {"run_id": fence.run_id, "attempt": fence.attempt, "time_used": time_used})
            if cur.rowcount == 0:
                raise LeaseLost(fence.run_id, fence.attempt)
            _insert_events(conn, events, time.time())

        await self._call(op)
        self._notify("run")

    async def finish_run(
        self,
        fence: Fence,
        status: RunStatus,
        output_json: str | None,
        error: dict[str, Any] | None,
        time_used: float,
        events: list[Event],
    ) -> None:
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                Q["finish"],
                {
                    "run_id": fence.run_id,
                    "attempt": fence.attempt,
                    "status": status.value,
                    "output": output_json,
                    "error": dumps(error) if error is not None else None,
                    "time_used": time_used,
                    "now": now,
                },
            )
            if cur.rowcount == 0:
                raise LeaseLost(fence.run_id, fence.attempt)
            _insert_events(conn, events, now)
            _fold_run(conn, fence.run_id, status, output_json, now)

        await self._call(op)
        self._notify("run")  # the session's next queued run may start

    async def request_cancel(self, run_id: str, tenant: str | None, now: float) -> RunRecord:
        error = {"type": "RunCancelled", "message": "cancelled before it ran to completion"}

        def op(conn: sqlite3.Connection) -> RunRecord:
            run = self._get(conn, run_id, tenant)
            if run.status.terminal:
                return run
            params = {"run_id": run_id, "now": now, "error": dumps(error)}
            if conn.execute(Q["cancel_idle"], params).rowcount:
                end = {"status": RunStatus.CANCELLED.value, "output": None, "error": error}
                conn.execute(Q["append_end_event"], {"run_id": run_id, "data": dumps(end), "now": now})
            else:
                conn.execute(Q["cancel_running"], params)
            return self._get(conn, run_id, tenant)

        record = await self._call(op)
        self._notify("cancel")
        return record

    @staticmethod
    def _get(conn: sqlite3.Connection, run_id: str, tenant: str | None) -> RunRecord:
        row = conn.execute(Q["get_run"], {"run_id": run_id}).fetchone()
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise RunNotFound(run_id)
        return _run_record(row)

    async def get_run(self, run_id: str, tenant: str | None = None) -> RunRecord:
        return await self._call(lambda conn: self._get(conn, run_id, tenant), write=False)

    async def list_runs(
        self,
        *,
        session_id: str | None = None,
        status: RunStatus | None = None,
        tenant: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        clauses, params = [], {"limit": limit}
        for column, value in (("session_id", session_id), ("status", status), ("tenant", tenant)):
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = str(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM runs {where} ORDER BY seq DESC LIMIT :limit"
        return await self._call(lambda conn: [_run_record(r) for r in conn.execute(sql, params)], write=False)

    async def count_active_runs(self, tenant: str) -> int:
        return await self._call(
            lambda conn: conn.execute(Q["count_active_runs"], {"tenant": tenant}).fetchone()[0], write=False
        )

    async def list_steps(self, run_id: str) -> list[StepRecord]:
        return await self._call(
            lambda conn: [_step_record(r) for r in conn.execute(Q["list_steps"], {"run_id": run_id})], write=False
        )

    async def list_events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        def op(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(Q["list_events"], {"run_id": run_id, "after": after, "limit": limit})
            return [Event(run_id, r[0], r[1], loads(r[2])) for r in rows]

        return await self._call(op, write=False)

    # messages ------------------------------------------------------------------------------
    async def deliver_message(self, session_id: str, payload_json: str, tenant: str | None, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            owner = conn.execute(Q["session_tenant"], {"id": session_id}).fetchone()
            if owner is None or (tenant is not None and owner[0] != tenant):
                raise SessionNotFound(session_id)
            msg_id = conn.execute(
                Q["insert_message"], {"session_id": session_id, "payload": payload_json, "now": now}
            ).lastrowid
            conn.execute(Q["wake_waiting"], {"session_id": session_id, "now": now})
            return msg_id

        msg_id = await self._call(op)
        self._notify("message")
        return msg_id

    async def consume_message(self, fence: Fence, step: StepRecord, events: list[Event]) -> Message | None:
        def op(conn: sqlite3.Connection) -> Message | None:
            row = conn.execute(Q["fence_check"], {"run_id": fence.run_id, "attempt": fence.attempt}).fetchone()
            if row is None:
                raise LeaseLost(fence.run_id, fence.attempt)
            _insert_events(conn, events, step.started_at)
            msg = conn.execute(Q["next_message"], {"session_id": row[0]}).fetchone()
            if msg is None:
                return None
            conn.execute(Q["consume_message"], {"id": msg["id"], "run_id": fence.run_id, "seq": step.seq})
            params = _step_params(step)
            params["result"] = msg["payload"]
            conn.execute(Q["upsert_step"], params)
            return Message(msg["id"], row[0], loads(msg["payload"]), msg["created_at"])

        return await self._call(op)

    # sessions ------------------------------------------------------------------------------
    @staticmethod
    def _session(conn: sqlite3.Connection, session_id: str, tenant: str | None) -> SessionRecord:
        row = conn.execute(Q["session_select"] + " WHERE id = :id", {"id": session_id}).fetchone()
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise SessionNotFound(session_id)
        return _session_record(row)

    async def create_session(
        self,
        session_id: str,
        tenant: str,
        principal: str | None,
        metadata: dict[str, Any],
        now: float,
        *,
        if_exists: str = "raise",
    ) -> SessionRecord:
        def op(conn: sqlite3.Connection) -> SessionRecord:
            cur = conn.execute(
                Q["create_session"],
                {"id": session_id, "tenant": tenant, "principal": principal, "metadata": dumps(metadata), "now": now},
            )
            if cur.rowcount == 0:
                existing = conn.execute(Q["session_tenant"], {"id": session_id}).fetchone()
                if if_exists != "do_nothing" or existing[0] != tenant:
                    raise SessionExists(session_id)
            return self._session(conn, session_id, tenant)

        return await self._call(op)

    async def get_session(self, session_id: str, tenant: str | None) -> SessionRecord:
        return await self._call(lambda conn: self._session(conn, session_id, tenant), write=False)

    async def update_session(
        self,
        session_id: str,
        tenant: str | None,
        now: float,
        *,
        metadata: dict[str, Any] | None = None,
        values: dict[str, Any] | None = None,
    ) -> SessionRecord:
        def op(conn: sqlite3.Connection) -> SessionRecord:
            current = self._session(conn, session_id, tenant)
            if metadata is not None:
                conn.execute(
                    Q["set_session_metadata"],
                    {"id": session_id, "now": now, "metadata": dumps({**current.metadata, **metadata})},
                )
            if values is not None:
                _write_values(conn, session_id, values, None, {"source": "update"}, now)
            return self._session(conn, session_id, tenant)

        return await self._call(op)

    async def delete_session(self, session_id: str, tenant: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            self._session(conn, session_id, tenant)
            for name in (
                "delete_session_steps",
                "delete_session_events",
                "delete_session_rest",
                "delete_session_inbox",
                "delete_session_checkpoints",
                "delete_session_row",
            ):
                conn.execute(Q[name], {"id": session_id})

        await self._call(op)
        self._notify("cancel")

    async def search_sessions(
        self,
        tenant: str | None,
        *,
        metadata: dict[str, Any] | None = None,
        status: SessionStatus | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> list[SessionRecord]:
        clauses, params = [], {}
        if tenant is not None:
            clauses.append("tenant = :tenant")
            params["tenant"] = tenant
        if status is not None:
            clauses.append("session_status = :status")
            params["status"] = SessionStatus(status).value
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = Q["session_select"] + where + " ORDER BY updated_at DESC, id"

        def op(conn: sqlite3.Connection) -> list[SessionRecord]:
            out, skipped = [], 0
            for row in conn.execute(sql, params):
                record = _session_record(row)
                if metadata and not _contains(record.metadata, metadata):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                out.append(record)
                if len(out) >= limit:
                    break
            return out

        return await self._call(op, write=False)

    async def list_checkpoints(
        self, session_id: str, tenant: str | None, limit: int = 10, before: int | None = None
    ) -> list[Checkpoint]:
        def op(conn: sqlite3.Connection) -> list[Checkpoint]:
            self._session(conn, session_id, tenant)
            rows = conn.execute(Q["list_checkpoints"], {"session_id": session_id, "before": before, "limit": limit})
            return [
                Checkpoint(
                    r["session_id"], r["id"], r["run_id"], loads(r["values"]), loads(r["metadata"]), r["created_at"]
                )
                for r in rows
            ]

        return await self._call(op, write=False)

    async def delete_run(self, run_id: str, tenant: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            run = self._get(conn, run_id, tenant)
            if not run.status.terminal:
                raise Conflict(f"run {run_id} is {run.status.value}; cancel it first")
            for name in ("delete_run_steps", "delete_run_events", "delete_run_row"):
                conn.execute(Q[name], {"run_id": run_id})

        await self._call(op)

    # items -------------------------------------------------------------------------------
    async def put_item(
        self, tenant: str, namespace: tuple[str, ...], key: str, value: dict[str, Any], now: float
    ) -> None:
        params = {"tenant": tenant, "namespace": _ns(namespace), "key": key, "value": dumps(value), "now": now}
        await self._call(lambda conn: conn.execute(Q["put_item"], params) and None)

    async def get_item(self, tenant: str, namespace: tuple[str, ...], key: str) -> Item | None:
        def op(conn: sqlite3.Connection) -> Item | None:
            row = conn.execute(Q["get_item"], {"tenant": tenant, "namespace": _ns(namespace), "key": key}).fetchone()
            return _item(row) if row else None

        return await self._call(op, write=False)

    async def delete_item(self, tenant: str, namespace: tuple[str, ...], key: str) -> None:
        params = {"tenant": tenant, "namespace": _ns(namespace), "key": key}
        await self._call(lambda conn: conn.execute(Q["delete_item"], params) and None)

    async def search_items(
        self,
        tenant: str,
        prefix: tuple[str, ...],
        *,
        filter: dict[str, Any] | None = None,
        query: str | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> list[Item]:
        needle = query.lower() if query else None

        def op(conn: sqlite3.Connection) -> list[Item]:
            out, skipped = [], 0
            for row in conn.execute(Q["items_under"], {"tenant": tenant, "prefix": _ns(prefix)}):
                if needle is not None and needle not in row["value"].lower():
                    continue
                item = _item(row)
                if filter and not _contains(item.value, filter):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                out.append(item)
                if len(out) >= limit:
                    break
            return out

        return await self._call(op, write=False)

    async def list_namespaces(
        self,
        tenant: str,
        *,
        prefix: tuple[str, ...] = (),
        suffix: tuple[str, ...] = (),
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, ...]]:
            seen: dict[tuple[str, ...], None] = {}
            for (ns,) in conn.execute(Q["namespaces"], {"tenant": tenant, "prefix": _ns(prefix)}):
                parts = tuple(ns.split(_NS_SEP)) if ns else ()
                if suffix and parts[-len(suffix) :] != suffix:
                    continue
                seen[parts[:max_depth] if max_depth else parts] = None
            return list(seen)[offset : offset + limit]

        return await self._call(op, write=False)

    # API keys ----------------------------------------------------------------------------
    async def create_api_key(
        self, key_id: str, key_hash: str, tenant: str, principal: str, roles: tuple[str, ...], now: float
    ) -> ApiKey:
        params = {
            "id": key_id,
            "key_hash": key_hash,
            "tenant": tenant,
            "principal": principal,
            "roles": dumps(list(roles)),
            "now": now,
        }
        await self._call(lambda conn: conn.execute(Q["insert_api_key"], params) and None)
        return ApiKey(key_id, tenant, principal, tuple(roles), now)

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        def op(conn: sqlite3.Connection) -> ApiKey | None:
            row = conn.execute(Q["find_api_key"], {"key_hash": key_hash}).fetchone()
            if row is None:
                return None
            return ApiKey(row["id"], row["tenant"], row["principal"], tuple(loads(row["roles"])), row["created_at"])

        return await self._call(op, write=False)

    # upkeep --------------------------------------------------------------------------------
    async def prune(self, finished_before: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            n = conn.execute(Q["count_pruned"], {"before": finished_before}).fetchone()[0]
            conn.execute(Q["prune_steps"], {"before": finished_before})
            conn.execute(Q["prune_events"], {"before": finished_before})
            return n

        return await self._call(op)

    async def stats(self, now: float) -> dict[str, float]:
        def op(conn: sqlite3.Connection) -> dict[str, float]:
            out = {"queued": 0.0, "running": 0.0, "waiting": 0.0, "oldest_queued_age_seconds": 0.0}
            for status, count, oldest in conn.execute(Q["stats"]):
                out[status] = float(count)
                if status == "queued" and oldest is not None:
                    out["oldest_queued_age_seconds"] = max(0.0, now - oldest)
            return out

        return await self._call(op, write=False)
