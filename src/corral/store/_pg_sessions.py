"""The PostgreSQL store's sessions (values, checkpoints), memory items and API keys: what the HTTP
API reads and writes, beside the runs that the engine drives (in `postgres`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .._json import dumps, loads
from ..errors import Conflict, RunNotFound, SessionExists, SessionNotFound
from . import _rows as rows
from . import values as reducer
from ._pg import MISSING, Conn, Database, Q, fetch_all, one
from .base import ApiKey, Checkpoint, Item, RunStatus, SessionRecord, SessionStatus

log = logging.getLogger("corral.store.postgres")

CHECKPOINTS_KEPT = 100  # per session; older ones are trimmed as new ones are written
_NS_SEP = "\x1f"


def _session_record(row: dict[str, Any]) -> SessionRecord:
    return rows.session_record(row, rows.as_is)


def _checkpoint(row: dict[str, Any]) -> Checkpoint:
    values = loads(row["values"])
    return Checkpoint(row["session_id"], row["id"], row["run_id"], values, row["metadata"], row["created_at"])


def _ns(namespace: tuple[str, ...]) -> str:
    return _NS_SEP.join(namespace)


def _item(row: dict[str, Any]) -> Item:
    namespace = tuple(row["namespace"].split(_NS_SEP)) if row["namespace"] else ()
    return Item(namespace, row["key"], loads(row["value"]), row["created_at"], row["updated_at"])


def _contains(value: Any, pattern: Any) -> bool:
    """True when `value` holds everything in `pattern` (dicts recursively, other values equal)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and _contains(value[k], v) for k, v in pattern.items())
    return value == pattern


async def write_values(
    conn: Conn, session_id: str, new_values: dict[str, Any], run_id: str | None, metadata: dict[str, Any], now: float
) -> None:
    params = {
        "session_id": session_id,
        "run_id": run_id,
        "values": dumps(new_values),
        "metadata": dumps(metadata),
        "now": now,
        "keep": CHECKPOINTS_KEPT,
    }
    await conn.execute(Q["write_values"], params)


async def fold_run(
    conn: Conn,
    run_id: str,
    session_id: str,
    current: dict[str, Any],
    input_json: str,
    status: RunStatus,
    output_json: str | None,
    now: float,
) -> None:
    """Merge a finished run's input (and output, if it succeeded) into its session's `current`
    values, read under the session row's lock, which the caller holds to the end of the
    transaction, so no concurrent update is lost."""
    ok = status is RunStatus.SUCCEEDED
    update = reducer.run_update(loads(input_json), ok, loads(output_json) if ok and output_json else None)
    merged = reducer.merge(current, update)
    await write_values(conn, session_id, merged, run_id, {"source": "run", "status": status.value}, now)


async def _session(conn: Conn, session_id: str, tenant: str | None) -> SessionRecord:
    row = await one(conn, Q["session_select"] + " WHERE id = %(id)s", {"id": session_id})
    if row is None or (tenant is not None and row["tenant"] != tenant):
        raise SessionNotFound(session_id)
    return _session_record(row)


class SessionsMixin:
    """Sessions, checkpoints, items and API keys for PostgresStore (which supplies `_run`)."""

    _db: Database
    _run: Callable[..., Awaitable[Any]]
    _wake: Callable[[str], None]

    # sessions ------------------------------------------------------------------------------
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
        params = {"id": session_id, "tenant": tenant, "principal": principal, "metadata": dumps(metadata), "now": now}

        async def op(conn: Conn) -> SessionRecord:
            if (await conn.execute(Q["create_session"], params)).rowcount == 0:
                existing = await one(conn, Q["lock_session"], {"id": session_id})
                if if_exists != "do_nothing" or existing is None or existing["tenant"] != tenant:
                    raise SessionExists(session_id)
            return await _session(conn, session_id, tenant)

        return await self._run("create_session", op)  # type: ignore[no-any-return]

    async def get_session(self, session_id: str, tenant: str | None) -> SessionRecord:
        return await self._run("get_session", lambda c: _session(c, session_id, tenant), write=False)  # type: ignore[no-any-return]

    async def update_session(
        self,
        session_id: str,
        tenant: str | None,
        now: float,
        *,
        metadata: dict[str, Any] | None = None,
        values: dict[str, Any] | None = None,
    ) -> SessionRecord:
        async def op(conn: Conn) -> SessionRecord:
            current = await _session(conn, session_id, tenant)
            await conn.execute(Q["lock_session"], {"id": session_id})
            if metadata is not None:
                merged = dumps({**current.metadata, **metadata})
                await conn.execute(Q["set_session_metadata"], {"id": session_id, "now": now, "metadata": merged})
            if values is not None:
                await write_values(conn, session_id, values, None, {"source": "update"}, now)
            return await _session(conn, session_id, tenant)

        return await self._run("update_session", op)  # type: ignore[no-any-return]

    async def delete_session(self, session_id: str, tenant: str | None) -> None:
        async def op(conn: Conn) -> bool:
            await _session(conn, session_id, tenant)
            runs = await fetch_all(conn, Q["lock_session_runs"], {"id": session_id})
            active = any(not RunStatus(row["status"]).terminal for row in runs)
            await conn.execute(Q["delete_session"], {"id": session_id})
            if active:  # the workers holding them find them gone at their next look
                await conn.execute(Q["notify"], self._db.note("cancel"))
            return active

        async def verify(conn: Conn) -> Any:
            return True if await one(conn, Q["lock_session"], {"id": session_id}) is None else MISSING

        if await self._run("delete_session", op, verify=verify):
            self._wake("cancel")

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
            clauses.append("tenant = %(tenant)s")
            params["tenant"] = tenant
        if status is not None:
            clauses.append("session_status = %(status)s")
            params["status"] = SessionStatus(status).value
        if metadata:
            # jsonb containment is a necessary condition of _contains: it narrows the rows in SQL
            clauses.append("metadata @> %(metadata)s::jsonb")
            params["metadata"] = dumps(metadata)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        query = Q["session_select"] + where + ' ORDER BY updated_at DESC, id COLLATE "C"'

        async def op(conn: Conn) -> list[SessionRecord]:
            out, skipped = [], 0
            for row in await fetch_all(conn, query, params):
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

        return await self._run("search_sessions", op, write=False)  # type: ignore[no-any-return]

    async def list_checkpoints(
        self, session_id: str, tenant: str | None, limit: int = 10, before: int | None = None
    ) -> list[Checkpoint]:
        async def op(conn: Conn) -> list[Checkpoint]:
            await _session(conn, session_id, tenant)
            params = {"session_id": session_id, "before": before, "limit": limit}
            return [_checkpoint(r) for r in await fetch_all(conn, Q["list_checkpoints"], params)]

        return await self._run("list_checkpoints", op, write=False)  # type: ignore[no-any-return]

    async def delete_run(self, run_id: str, tenant: str | None) -> None:
        async def op(conn: Conn) -> None:
            row = await one(conn, Q["run_for_update"], {"run_id": run_id})
            if row is None or (tenant is not None and row["tenant"] != tenant):
                raise RunNotFound(run_id)
            if not RunStatus(row["status"]).terminal:
                raise Conflict(f"run {run_id} is {row['status']}; cancel it first")
            await conn.execute(Q["delete_run"], {"run_id": run_id})

        await self._run("delete_run", op)

    # items ---------------------------------------------------------------------------------
    async def put_item(
        self, tenant: str, namespace: tuple[str, ...], key: str, value: dict[str, Any], now: float
    ) -> None:
        params = {"tenant": tenant, "namespace": _ns(namespace), "key": key, "value": dumps(value), "now": now}
        await self._run("put_item", lambda c: c.execute(Q["put_item"], params), idempotent=True)

    async def get_item(self, tenant: str, namespace: tuple[str, ...], key: str) -> Item | None:
        params = {"tenant": tenant, "namespace": _ns(namespace), "key": key}
        row = await self._run("get_item", lambda c: one(c, Q["get_item"], params), write=False)
        return _item(row) if row else None

    async def delete_item(self, tenant: str, namespace: tuple[str, ...], key: str) -> None:
        params = {"tenant": tenant, "namespace": _ns(namespace), "key": key}
        await self._run("delete_item", lambda c: c.execute(Q["delete_item"], params), idempotent=True)

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
        params = {"tenant": tenant, "prefix": _ns(prefix), "needle": query.lower() if query else None}

        async def op(conn: Conn) -> list[Item]:
            out, skipped = [], 0
            for row in await fetch_all(conn, Q["items_under"], params):
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

        return await self._run("search_items", op, write=False)  # type: ignore[no-any-return]

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
        rows = await self._run(
            "list_namespaces",
            lambda c: fetch_all(c, Q["namespaces"], {"tenant": tenant, "prefix": _ns(prefix)}),
            write=False,
        )
        seen: dict[tuple[str, ...], None] = {}
        for row in rows:
            parts = tuple(row["namespace"].split(_NS_SEP)) if row["namespace"] else ()
            if suffix and parts[-len(suffix) :] != suffix:
                continue
            seen[parts[:max_depth] if max_depth else parts] = None
        return list(seen)[offset : offset + limit]

    # API keys ------------------------------------------------------------------------------
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
        await self._run("create_api_key", lambda c: c.execute(Q["insert_api_key"], params))
        return ApiKey(key_id, tenant, principal, tuple(roles), now)

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        row = await self._run("find_api_key", lambda c: one(c, Q["find_api_key"], {"key_hash": key_hash}), write=False)
        if row is None:
            return None
        return ApiKey(row["id"], row["tenant"], row["principal"], tuple(row["roles"]), row["created_at"])
