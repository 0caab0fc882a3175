"""The PostgreSQL store: one database shared by any number of worker processes.

Claims take rows with FOR UPDATE SKIP LOCKED, so claimers never wait on one another; every fenced
write holds the run's row while it checks the attempt, so a claim and a stale write can never
interleave. Wake-ups travel by LISTEN/NOTIFY to every process; the workers' polling is only the
fallback. All database work goes through `Database.run` (in `_pg`), which retries what a lost
connection cannot have applied (or can verify) and turns psycopg's errors into StoreError.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from psycopg import sql
from psycopg.rows import DictRow

from .._json import dumps, loads
from ..errors import LeaseLost, RunNotFound, SessionNotFound
from . import _rows as rows
from ._pg import MISSING, Conn, Database, Migration, MigrationState, PgOptions, Q, fetch_all, one, parse_url
from ._pg_sessions import SessionsMixin, fold_run
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

__all__ = ["Migration", "MigrationState", "PgOptions", "PostgresStore", "parse_url"]

log = logging.getLogger("corral.store.postgres")


def _run_record(row: DictRow) -> RunRecord:
    return rows.run_record(row, rows.as_is)


def _step_record(row: DictRow) -> StepRecord:
    return rows.step_record(row, rows.as_is)


_step_params = rows.step_params


def _event_params(events: list[Event], now: float) -> dict[str, Any]:
    return {
        "event_runs": [e.run_id for e in events],
        "event_ids": [e.id for e in events],
        "event_types": [e.type for e in events],
        "event_data": [dumps(e.data) for e in events],
        "now": now,
    }


def _pick_order(row: DictRow) -> tuple[Any, ...]:
    at = row["pick_at"]
    return (row["pick_part"], row["pick_turn"], at is not None, at or 0.0, row["pick_seq"])


class PostgresStore(SessionsMixin, Store):
    """Store on PostgreSQL. `url` is a libpq URL, optionally with `schema`, `pool_min_size` and
    `pool_max_size` query parameters. Transient failures are retried for up to `retry_seconds`."""

    def __init__(self, url: str, *, retry_seconds: float = 10.0, announce_events: bool = True) -> None:
        super().__init__()
        self.url = url
        self.announces_events = announce_events
        self._db = Database(parse_url(url), retry_seconds, self._wake, self._events_written)
        self.schema = self._db.schema
        self._run = self._db.run

    async def open(self) -> None:
        # A fresh mark per opening lets the listener skip this store's own notifications.
        await self._db.open(sender=uuid.uuid4().hex[:12])

    async def close(self) -> None:
        await self._db.close()

    def _wake(self, topic: str) -> None:
        """`_notify`, but one failing listener does not keep the others from waking."""
        for listener in list(self._listeners):
            try:
                listener(topic)
            except Exception:
                log.exception("a store listener failed on %r", topic)

    async def upgrade(self) -> list[int]:
        """Apply the pending migrations (safe while other processes start); returns their versions."""
        return await self._db.upgrade()

    async def migration_status(self) -> list[Migration]:
        """Every migration this code knows or the database has applied, in order, with its state."""
        return await self._db.migration_status()

    async def schema_version(self) -> int:
        row = await self._run("schema_version", lambda c: one(c, Q["schema_version"]), write=False)
        return int(row["version"]) if row else 0

    # runs ----------------------------------------------------------------------------------
    async def create_run(self, run: NewRun) -> RunRecord:
        async def op(conn: Conn) -> RunRecord:
            params = {"id": run.session_id, "tenant": run.tenant, "principal": run.principal, "now": run.created_at}
            await conn.execute(Q["insert_session"], params)
            owner = await one(conn, Q["lock_session"], {"id": run.session_id})
            if owner is None or owner["tenant"] != run.tenant:
                raise SessionNotFound(run.session_id)
            row = await one(
                conn,
                Q["insert_run"],
                rows.run_params(run),
            )
            await conn.execute(Q["notify"], self._db.note("run"))
            assert row is not None
            return _run_record(row)

        async def verify(conn: Conn) -> Any:
            row = await one(conn, Q["get_run"], {"run_id": run.id})
            return _run_record(row) if row else MISSING

        record = await self._run("create_run", op, verify=verify)
        self._wake("run")
        return record

    async def claim_runs(
        self, owner: str, limit: int, agents: list[str], lease_seconds: float, now: float, run_id: str | None = None
    ) -> list[Claim]:
        if limit <= 0 or not agents:
            return []
        params = {
            "agents": agents,
            "now": now,
            "limit": limit,
            "slack": 2 * limit,  # candidates to try: others may hold some of the best ones
            "run_id": run_id,
            "owner": owner,
            "expires": now + lease_seconds,
        }

        async def op(conn: Conn) -> list[Claim]:
            if run_id is not None:
                rows = await fetch_all(conn, Q["claim_one"], params)
            else:
                rows = sorted(await fetch_all(conn, Q["claim"], params), key=_pick_order)
            runs = [_run_record(r) for r in rows]
            again = [r.id for r in runs if r.attempt > 1]
            steps: dict[str, dict[str, StepRecord]] = {}
            last: dict[str, int] = {}
            if again:
                for row in await fetch_all(conn, Q["journals"], {"run_ids": again}):
                    steps.setdefault(row["run_id"], {})[row["seq"]] = _step_record(row)
                last = {r["run_id"]: r["last"] for r in await fetch_all(conn, Q["last_event_ids"], {"run_ids": again})}
            return [Claim(run=r, steps=steps.get(r.id, {}), last_event_id=last.get(r.id, 0)) for r in runs]

        return await self._run("claim_runs", op)

    async def lease_owners(self, prefix: str) -> list[str]:
        rows = await self._run(
            "lease_owners", lambda c: fetch_all(c, Q["lease_owners"], {"prefix": prefix}), write=False
        )
        return [r["lease_owner"] for r in rows]

    async def expire_leases(self, owners: list[str], now: float) -> int:
        async def op(conn: Conn) -> int:
            cur = await conn.execute(Q["expire_leases"], {"owners": owners, "expired": now - 0.001})
            return cur.rowcount

        count = await self._run("expire_leases", op, idempotent=True)
        if count:
            self._wake("run")
        return count

    async def renew_leases(
        self, owner: str, held: list[Fence], lease_seconds: float, now: float, time_used: dict[str, float]
    ) -> Renewal:
        if not held:
            return Renewal(lost=frozenset(), cancel_requested=frozenset())
        params = {
            "run_ids": [f.run_id for f in held],
            "attempts": [f.attempt for f in held],
            "times": [time_used.get(f.run_id, 0.0) for f in held],
            "expires": now + lease_seconds,
        }
        rows = await self._run("renew_leases", lambda c: fetch_all(c, Q["renew"], params), idempotent=True)
        renewed = {r["id"]: r["cancel_requested"] for r in rows}
        return Renewal(
            lost=frozenset(f.run_id for f in held if f.run_id not in renewed),
            cancel_requested=frozenset(rid for rid, flagged in renewed.items() if flagged),
        )

    async def record_step(self, fence: Fence, step: StepRecord, events: list[Event], *, announce: bool = False) -> None:
        params = _step_params(step) | _event_params(events, step.finished_at or step.started_at)
        params |= {"run_id": fence.run_id, "fence_attempt": fence.attempt}
        params |= self._announcement(fence.run_id, announce and bool(events))

        async def op(conn: Conn) -> None:
            row = await one(conn, Q["record_step"], params)
            if row is None or row["written"] == 0:
                raise LeaseLost(fence.run_id, fence.attempt)

        async def verify(conn: Conn) -> Any:
            row = await one(conn, Q["get_step"], {"run_id": fence.run_id, "seq": step.seq})
            landed = row is not None and row["attempt"] == step.attempt and row["status"] == step.status
            return None if landed else MISSING

        await self._run("record_step", op, verify=verify, single_statement=True)

    async def append_events(self, batches: Sequence[tuple[Fence, list[Event]]]) -> set[str]:
        batches = [(fence, events) for fence, events in batches if events]
        if not batches:
            return set()
        params = _event_params([e for _, events in batches for e in events], time.time())
        params |= self._announcement("", True)  # the payload ends with the run's id, added per run
        params |= {"fence_runs": [f.run_id for f, _ in batches], "fence_attempts": [f.attempt for f, _ in batches]}

        async def op(conn: Conn) -> set[str]:
            held = {row["id"] for row in await fetch_all(conn, Q["append_events"], params)}
            return {fence.run_id for fence, _ in batches} - held

        async def verify(conn: Conn) -> Any:
            # One statement: it landed if any run's last event is there; the runs without theirs were refused.
            rows = await fetch_all(conn, Q["last_event_ids"], {"run_ids": [f.run_id for f, _ in batches]})
            last = {row["run_id"]: row["last"] for row in rows}
            refused = {f.run_id for f, events in batches if last.get(f.run_id, 0) < events[-1].id}
            return MISSING if len(refused) == len(batches) else refused

        return await self._run("append_events", op, verify=verify, single_statement=True)

    def _announcement(self, run_id: str, wanted: bool) -> dict[str, Any]:
        """The parameters that make a write NOTIFY the watchers of `run_id` in other processes."""
        return {"announce": wanted and self.announces_events} | self._db.note("events", run_id)

    async def park_run(
        self, fence: Fence, wake_at: float | None, time_used: float, events: list[Event], waiting_for_message: bool
    ) -> bool:
        now = time.time()
        due = False

        async def op(conn: Conn) -> bool:
            nonlocal due
            row = await one(conn, Q["fence_lock"], {"run_id": fence.run_id, "attempt": fence.attempt})
            if row is None:
                raise LeaseLost(fence.run_id, fence.attempt)
            if waiting_for_message:
                # Under the session's lock no message can arrive between this look and the park.
                await conn.execute(Q["lock_session"], {"id": row["session_id"]})
                if await one(conn, Q["pending_message"], {"session_id": row["session_id"]}) is not None:
                    return False
            parked = await one(
                conn,
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
            if events:
                await conn.execute(Q["insert_events"], _event_params(events, now))
            due = parked is not None and parked["wake_at"] is not None and parked["wake_at"] <= now
            if due:  # a cancel arrived meanwhile: whoever is free should end the run now
                await conn.execute(Q["notify"], self._db.note("run", fence.run_id))
            return True

        async def verify(conn: Conn) -> Any:
            row = await one(conn, Q["get_run"], {"run_id": fence.run_id})
            ok = row is not None and row["status"] == RunStatus.WAITING and row["attempt"] == fence.attempt
            return True if ok else MISSING

        parked = await self._run("park_run", op, verify=verify)
        if due:
            self._wake("run")
        return parked

    async def release_run(self, fence: Fence, time_used: float, events: list[Event]) -> None:
        async def op(conn: Conn) -> None:
            params = {"run_id": fence.run_id, "attempt": fence.attempt, "time_used": time_used}
            if (await conn.execute(Q["release"], params)).rowcount == 0:
                raise LeaseLost(fence.run_id, fence.attempt)
            if events:
                await conn.execute(Q["insert_events"], _event_params(events, time.time()))
            await conn.execute(Q["notify"], self._db.note("run", fence.run_id))

        await self._run("release_run", op, verify=self._verify_status(fence, RunStatus.QUEUED))
        self._wake("run")

    async def finish_run(
        self,
        fence: Fence,
        status: RunStatus,
        output_json: str | None,
        error: dict[str, Any] | None,
        time_used: float,
        events: list[Event],
    ) -> None:
        params = _event_params(events, time.time()) | self._db.note("run", fence.run_id)
        params |= {
            "run_id": fence.run_id,
            "attempt": fence.attempt,
            "status": status.value,
            "output": output_json,
            "error": dumps(error) if error is not None else None,
            "time_used": time_used,
        }

        async def op(conn: Conn) -> None:
            row = await one(conn, Q["finish"], params)
            if row is None:
                raise LeaseLost(fence.run_id, fence.attempt)
            current = loads(row["values"]) if row["values"] else {}
            await fold_run(
                conn, fence.run_id, row["session_id"], current, row["input"], status, output_json, params["now"]
            )

        await self._run("finish_run", op, verify=self._verify_status(fence, status))
        self._wake("run")  # the session's next queued run may start

    def _verify_status(self, fence: Fence, status: RunStatus) -> Callable[[Conn], Awaitable[Any]]:
        async def verify(conn: Conn) -> Any:
            row = await one(conn, Q["get_run"], {"run_id": fence.run_id})
            return None if row and row["status"] == status and row["attempt"] == fence.attempt else MISSING

        return verify

    async def request_cancel(self, run_id: str, tenant: str | None, now: float) -> RunRecord:
        error = {"type": "RunCancelled", "message": "cancelled before it ran to completion"}

        async def op(conn: Conn) -> RunRecord:
            row = await one(conn, Q["run_for_update"], {"run_id": run_id})
            if row is None or (tenant is not None and row["tenant"] != tenant):
                raise RunNotFound(run_id)
            if RunStatus(row["status"]).terminal:
                return _run_record(row)
            params = {"run_id": run_id, "now": now, "error": dumps(error)}
            updated = await one(conn, Q["cancel_idle"], params)
            if updated is not None:
                end = {"status": RunStatus.CANCELLED.value, "output": None, "error": error}
                await conn.execute(Q["append_end_event"], {"run_id": run_id, "data": dumps(end), "now": now})
            else:
                updated = await one(conn, Q["cancel_running"], params)
            await conn.execute(Q["notify"], self._db.note("cancel", run_id))
            return _run_record(updated or row)

        record = await self._run("request_cancel", op, idempotent=True)
        self._wake("cancel")
        return record

    async def get_run(self, run_id: str, tenant: str | None = None) -> RunRecord:
        row = await self._run("get_run", lambda c: one(c, Q["get_run"], {"run_id": run_id}), write=False)
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise RunNotFound(run_id)
        return _run_record(row)

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
                clauses.append(sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column)))
                params[column] = str(value)
        names = status_names(status)
        if names is not None:
            clauses.append(sql.SQL("status = ANY({})").format(sql.Placeholder("status")))
            params["status"] = names
        where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
        query = sql.SQL(Q["list_runs"]).format(where=where)  # type: ignore[arg-type]
        rows = await self._run("list_runs", lambda c: fetch_all(c, query, params), write=False)
        return [_run_record(r) for r in rows]

    async def admission_counts(self, tenant: str) -> tuple[int, int]:
        params = {"tenant": tenant}
        row = await self._run("admission_counts", lambda c: one(c, Q["admission_counts"], params), write=False)
        return (int(row["active"]), int(row["queued"])) if row else (0, 0)

    async def list_steps(self, run_id: str) -> list[StepRecord]:
        rows = await self._run("list_steps", lambda c: fetch_all(c, Q["list_steps"], {"run_id": run_id}), write=False)
        return [_step_record(r) for r in rows]

    async def list_events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        params = {"run_id": run_id, "after": after, "limit": limit}
        rows = await self._run("list_events", lambda c: fetch_all(c, Q["list_events"], params), write=False)
        return [Event(run_id, r["id"], r["type"], loads(r["data"])) for r in rows]

    # messages ------------------------------------------------------------------------------
    async def deliver_message(self, session_id: str, payload_json: str, tenant: str | None, now: float) -> int:
        async def op(conn: Conn) -> int:
            owner = await one(conn, Q["lock_session"], {"id": session_id})
            if owner is None or (tenant is not None and owner["tenant"] != tenant):
                raise SessionNotFound(session_id)
            note = self._db.note("message")
            params = {"session_id": session_id, "payload": payload_json, "now": now, "channel": note["channel"]}
            row = await one(conn, Q["deliver"], params | {"payload_note": note["payload"]})
            assert row is not None
            return int(row["id"])

        msg_id = await self._run("deliver_message", op)  # not idempotent: a retry could deliver twice
        self._wake("message")
        return msg_id

    async def consume_message(self, fence: Fence, step: StepRecord, events: list[Event]) -> Message | None:
        params = _step_params(step) | _event_params(events, step.started_at) | {"fence_attempt": fence.attempt}

        async def op(conn: Conn) -> Message | None:
            row = await one(conn, Q["consume_message"], params)
            if row is None:
                raise LeaseLost(fence.run_id, fence.attempt)
            if row["id"] is None:
                return None
            return Message(row["id"], row["session_id"], loads(row["payload"]), row["created_at"])

        async def verify(conn: Conn) -> Any:
            msg = await one(conn, Q["consumed_message"], {"run_id": fence.run_id, "seq": step.seq})
            return Message(msg["id"], msg["session_id"], loads(msg["payload"]), msg["created_at"]) if msg else MISSING

        return await self._run("consume_message", op, verify=verify, single_statement=True)

    # upkeep --------------------------------------------------------------------------------
    async def prune(self, finished_before: float) -> int:
        async def op(conn: Conn) -> int:
            lock = await one(conn, Q["try_prune_lock"], {"key": f"{self._db.lock_key}:prune"})
            if not (lock and lock["locked"]):
                return 0  # another process is pruning right now
            row = await one(conn, Q["count_pruned"], {"before": finished_before})
            await conn.execute(Q["prune_steps"], {"before": finished_before})
            await conn.execute(Q["prune_events"], {"before": finished_before})
            return int(row["n"]) if row else 0

        return await self._run("prune", op, idempotent=True)

    async def stats(self, now: float) -> dict[str, float]:
        async def op(conn: Conn) -> tuple[list[DictRow], DictRow | None]:
            return await fetch_all(conn, Q["stats"]), await one(conn, Q["stats_due"], {"now": now})

        rows, due = await self._run("stats", op, write=False)
        out = {"queued": 0.0, "running": 0.0, "waiting": 0.0, "due": 0.0, "oldest_queued_age_seconds": 0.0}
        for row in rows:
            out[row["status"]] = float(row["n"])
            if row["status"] == "queued" and row["oldest"] is not None:
                out["oldest_queued_age_seconds"] = max(0.0, now - row["oldest"])
        out["due"] = float(due["n"]) if due else 0.0
        return out
