"""Rows to records, shared by the backends. A backend passes `doc`, how it decodes a document
column (roles, limits, error, metadata): SQLite stores JSON text, PostgreSQL jsonb that arrives
decoded. Inputs, outputs and step results are exact JSON text on both (replay must see the bytes
the first run saw)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._json import dumps, loads
from .base import NewRun, RunRecord, RunStatus, SessionRecord, SessionStatus, StepKind, StepRecord, StepStatus

Doc = Callable[[Any], Any]


def json_text(value: Any) -> Any:
    """`doc` for a backend that keeps documents as JSON text."""
    return loads(value) if value is not None else None


def as_is(value: Any) -> Any:
    """`doc` for a backend whose driver decodes documents itself."""
    return value


def run_record(row: Mapping[str, Any], doc: Doc) -> RunRecord:
    return RunRecord(
        id=row["id"],
        session_id=row["session_id"],
        tenant=row["tenant"],
        principal=row["principal"],
        roles=tuple(doc(row["roles"])),
        agent=row["agent"],
        agent_version=row["agent_version"],
        input=loads(row["input"]),
        limits=doc(row["limits"]),
        status=RunStatus(row["status"]),
        output=loads(row["output"]) if row["output"] is not None else None,
        error=doc(row["error"]),
        attempt=row["attempt"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        wake_at=row["wake_at"],
        time_used=row["time_used"],
        cancel_requested=bool(row["cancel_requested"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        metadata=doc(row["metadata"]),
    )


def step_record(row: Mapping[str, Any], doc: Doc) -> StepRecord:
    return StepRecord(
        run_id=row["run_id"],
        seq=row["seq"],
        kind=StepKind(row["kind"]),
        name=row["name"],
        input_hash=row["input_hash"],
        status=StepStatus(row["status"]),
        result_json=row["result"],
        error=doc(row["error"]),
        attempt=row["attempt"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def run_params(run: NewRun) -> dict[str, Any]:
    """The parameters of a backend's `insert_run` query."""
    return {
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
    }


def step_params(step: StepRecord) -> dict[str, Any]:
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


def session_record(row: Mapping[str, Any], doc: Doc) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        tenant=row["tenant"],
        principal=row["principal"],
        metadata=doc(row["metadata"]),
        values=loads(row["values"]),
        status=SessionStatus(row["session_status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
