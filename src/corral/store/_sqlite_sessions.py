"""The SQLite store's sessions (values, checkpoints), memory items and API keys: what the HTTP API
reads and writes, beside the runs that the engine drives (in `sqlite`)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from .._json import dumps, loads
from ..errors import Conflict, SessionExists, SessionNotFound
from . import _rows as rows
from . import values as reducer
from ._sqlite_db import Op
from .base import ApiKey, Checkpoint, Item, RunRecord, RunStatus, SessionRecord, SessionStatus
from .sql import load_queries

Q = load_queries("sqlite")
_NS_SEP = "\x1f"
CHECKPOINTS_KEPT = 100  # per session; older ones are trimmed as new ones are written


def fold_run(conn: sqlite3.Connection, run_id: str, status: RunStatus, output_json: str | None, now: float) -> None:
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
    return rows.session_record(row, rows.json_text)


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


class SessionsMixin:
    """Sessions, items and API keys for SQLiteStore (which provides `_call` and `_get`)."""

    def _call(self, op: Op, write: bool = True) -> asyncio.Future[Any]:  # provided by SQLiteStore
        raise NotImplementedError

    @staticmethod
    def _get(conn: sqlite3.Connection, run_id: str, tenant: str | None) -> RunRecord:  # provided by SQLiteStore
        raise NotImplementedError

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
        def op(conn: sqlite3.Connection) -> bool:
            self._session(conn, session_id, tenant)
            active = conn.execute(Q["count_session_active_runs"], {"id": session_id}).fetchone()[0] > 0
            for name in (
                "delete_session_steps",
                "delete_session_events",
                "delete_session_rest",
                "delete_session_inbox",
                "delete_session_checkpoints",
                "delete_session_row",
            ):
                conn.execute(Q[name], {"id": session_id})
            return active

        if await self._call(op):  # the workers holding its runs find them gone at their next look
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
