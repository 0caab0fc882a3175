"""The SQLite store: one file in WAL mode, shared by any number of processes.

All database work of a process goes through one thread that owns the connection and commits in
groups (`_sqlite_db`); this module holds the runs the engine drives, `_sqlite_sessions` the
sessions, items and keys the HTTP API reads and writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Collection, Sequence
from json.encoder import encode_basestring as _str  # a str as a JSON string, in C
from pathlib import Path
from typing import Any

import orjson

from .._json import dumps, loads
from ..errors import LeaseLost, RunNotFound, SessionNotFound, StoreError
from . import _rows as rows
from ._sqlite_db import Op, _DbThread, sqlite_path
from ._sqlite_sessions import SessionsMixin, fold_run
from .base import (
    Claim,
    Event,
    Fence,
    Message,
    NewRun,
    Renewal,
    RunRecord,
    RunStatus,
    StepRecord,
    Store,
    status_names,
)
from .sql import load_migrations, load_queries

Q = load_queries("sqlite")


def _run_record(row: sqlite3.Row) -> RunRecord:
    return rows.run_record(row, rows.json_text)


def _step_record(row: sqlite3.Row) -> StepRecord:
    return rows.step_record(row, rows.json_text)


_step_params = rows.step_params


def _insert_events(conn: sqlite3.Connection, events: list[Event], now: float) -> None:
    if events:
        conn.execute(Q["insert_events"], {"events": _events_json(events), "now": now})


def _events_json(events: list[Event]) -> str:
    """The events as one JSON array of [run_id, id, type, data], for insert_events.

    Encoded by orjson in one call (a ninth of the json module's time, and this thread holds the
    GIL while it encodes); a batch orjson refuses (an int over 64 bits, a key that is not a
    string) goes through `dumps`, which also says what is not JSON. Every event's data has been
    through `dumps` once already (ctx.emit checks it), so orjson never meets a NaN here."""
    try:
        return orjson.dumps([(e.run_id, e.id, e.type, e.data) for e in events]).decode()  # text, not a BLOB
    except TypeError:
        items = ",".join(f"[{_str(e.run_id)},{e.id:d},{_str(e.type)},{dumps(e.data)}]" for e in events)
        return f"[{items}]"


class SQLiteStore(SessionsMixin, Store):
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
                rows.run_params(run),
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
            if not ids:
                return []
            claim = {"ids": dumps(ids), "owner": owner, "expires": now + lease_seconds, "now": now}
            order = {rid: i for i, rid in enumerate(ids)}
            claimed = sorted(conn.execute(Q["claim"], claim).fetchall(), key=lambda row: order[row["id"]])
            claims = []
            for row in claimed:
                run = _run_record(row)
                rid = run.id
                if run.attempt > 1:
                    steps = {s.seq: s for s in map(_step_record, conn.execute(Q["journal"], {"run_id": rid}))}
                    last = conn.execute(Q["last_event_id"], {"run_id": rid}).fetchone()[0]
                else:
                    steps, last = {}, 0
                claims.append(Claim(run=run, steps=steps, last_event_id=last))
            return claims

        return await self._call(op)

    async def lease_owners(self, prefix: str) -> list[str]:
        rows = lambda conn: [r[0] for r in conn.execute(Q["lease_owners"], {"prefix": prefix})]  # noqa: E731
        return await self._call(rows, write=False)

    async def expire_leases(self, owners: list[str], now: float) -> int:
        params = {"owners": dumps(owners), "expired": now - 0.001}
        count = await self._call(lambda conn: conn.execute(Q["expire_leases"], params).rowcount)
        if count:
            self._notify("run")
        return count

    async def renew_leases(
        self, owner: str, held: list[Fence], lease_seconds: float, now: float, time_used: dict[str, float]
    ) -> Renewal:
        held_json = dumps([[f.run_id, f.attempt, time_used.get(f.run_id, 0.0)] for f in held])

        def op(conn: sqlite3.Connection) -> Renewal:
            kept = {r[0] for r in conn.execute(Q["renew"], {"held": held_json, "expires": now + lease_seconds})}
            lost = {f.run_id for f in held} - kept
            cancels = {r[0] for r in conn.execute(Q["cancel_flags"], {"owner": owner})}
            return Renewal(lost=frozenset(lost), cancel_requested=frozenset(cancels - lost))

        return await self._call(op)

    async def record_step(self, fence: Fence, step: StepRecord, events: list[Event], *, announce: bool = False) -> None:
        # `announce` has nothing to do: other processes poll a SQLite file.
        params = _step_params(step)
        params["attempt"] = fence.attempt  # the write is fenced on the claim, whatever the record says

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(Q["upsert_step"], params).rowcount == 0:
                raise LeaseLost(fence.run_id, fence.attempt)
            _insert_events(conn, events, step.finished_at or step.started_at)

        await self._call(op)

    async def append_events(self, batches: Sequence[tuple[Fence, list[Event]]]) -> set[str]:
        if not any(events for _, events in batches):
            return set()
        # Encoded here, on the event loop's thread, so that the DB thread runs two statements and
        # almost no Python: each time it takes the GIL back from a busy loop it can wait a whole
        # switch interval, and a flush of a thousand runs used to take it a thousand times.
        fences = orjson.dumps([(fence.run_id, fence.attempt) for fence, _ in batches]).decode()
        encoded = _events_json([e for _, events in batches for e in events])

        def op(conn: sqlite3.Connection) -> set[str]:
            lost = {row[0] for row in conn.execute(Q["lost_fences"], {"fences": fences})}
            if lost:  # rare: attempts that lost their runs; the others' events still go in
                kept = [e for fence, events in batches if fence.run_id not in lost for e in events]
                _insert_events(conn, kept, time.time())
            else:
                conn.execute(Q["insert_events"], {"events": encoded, "now": time.time()})
            return lost

        return await self._call(op)

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
            fold_run(conn, fence.run_id, status, output_json, now)

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
        status: RunStatus | Collection[RunStatus] | None = None,
        tenant: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        clauses, params = [], {"limit": limit}
        for column, value in (("session_id", session_id), ("tenant", tenant)):
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = str(value)
        names = status_names(status)
        if names is not None:
            clauses.append("status IN (SELECT value FROM json_each(:status))")
            params["status"] = dumps(names)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM runs {where} ORDER BY seq DESC LIMIT :limit"
        return await self._call(lambda conn: [_run_record(r) for r in conn.execute(sql, params)], write=False)

    async def admission_counts(self, tenant: str) -> tuple[int, int]:
        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            active, queued = conn.execute(Q["admission_counts"], {"tenant": tenant}).fetchone()
            return int(active), int(queued)

        return await self._call(op, write=False)

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
            out = {"queued": 0.0, "running": 0.0, "waiting": 0.0, "due": 0.0, "oldest_queued_age_seconds": 0.0}
            for status, count, oldest in conn.execute(Q["stats"]):
                out[status] = float(count)
                if status == "queued" and oldest is not None:
                    out["oldest_queued_age_seconds"] = max(0.0, now - oldest)
            out["due"] = float(conn.execute(Q["stats_due"], {"now": now}).fetchone()[0])
            return out

        return await self._call(op, write=False)
