"""Corral ↔ LangGraph shapes, in one place: messages, values, assistants, threads, runs, items.

Corral keeps messages as `{"role", "content", "tool_calls": [{"id", "name", "arguments"}],
"tool_call_id"}`; LangGraph clients see LangChain message dicts (`{"type": "human" | "ai" | "tool" |
"system", "content", "id", "tool_calls": [{"name", "args", "id", "type": "tool_call"}], ...}`).
Incoming messages are converted (and given an id) before they reach the engine; stored messages
without an id are shown with one derived from their thread and position, so it is stable.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..agent import Agent, AnyAgent
from ..store.base import Checkpoint, Item, RunRecord, RunStatus, SessionRecord, SessionStatus

# The run metadata key under which the API keeps what it needs to present a run (strategy, modes).
API_KEY = "corral_api"
_ASSISTANTS = uuid.UUID("5f0c2a8e-3b7d-5c1e-9a44-c0a1a7e1d001")
_MESSAGES = uuid.UUID("5f0c2a8e-3b7d-5c1e-9a44-c0a1a7e1d002")

_TO_LC = {"user": "human", "assistant": "ai", "tool": "tool", "system": "system"}
_FROM_LC = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "tool": "tool",
    "system": "system",
    "developer": "system",
}
_LC_TYPES = {"HumanMessage": "human", "AIMessage": "ai", "AIMessageChunk": "ai", "ToolMessage": "tool"}


class InvalidInput(ValueError):
    """A request value that cannot be used; `field` names where it is (`input.messages.0.type`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat() if t is not None else None


# messages --------------------------------------------------------------------------------------
def message_id(thread_id: str, index: int) -> str:
    """The id shown for a stored message that has none: stable for its thread and position."""
    return str(uuid.uuid5(_MESSAGES, f"{thread_id}:{index}"))


def to_lc_message(message: Any, default_id: str) -> dict[str, Any]:
    """A Corral message (or a plain string) as a LangChain message dict."""
    if not isinstance(message, Mapping):
        return {"type": "human", "content": str(message), "id": default_id, **_LC_EXTRAS}
    role = str(message.get("role") or message.get("type") or "user")
    kind = _TO_LC.get(role, _TO_LC.get(_FROM_LC.get(role, ""), role))
    out: dict[str, Any] = {
        "type": kind,
        "content": message.get("content", ""),
        "id": message.get("id") or default_id,
        "name": message.get("name"),
        **_LC_EXTRAS,
    }
    if kind == "ai":
        out["tool_calls"] = [
            {
                "name": c.get("name", ""),
                "args": c.get("arguments", c.get("args", {})),
                "id": c.get("id"),
                "type": "tool_call",
            }
            for c in message.get("tool_calls") or ()
            if isinstance(c, Mapping)
        ]
        out["invalid_tool_calls"] = []
        out["usage_metadata"] = None
    elif kind == "tool":
        out["tool_call_id"] = message.get("tool_call_id")
        out["status"] = "success"
    return out


_LC_EXTRAS: dict[str, Any] = {"additional_kwargs": {}, "response_metadata": {}}


def from_lc_message(message: Any, field: str) -> dict[str, Any]:
    """A LangChain (or OpenAI-style) message as a Corral message; raises InvalidInput naming `field`."""
    if isinstance(message, str):
        return {"role": "user", "content": message, "id": str(uuid.uuid4())}
    if not isinstance(message, Mapping):
        raise InvalidInput(field, "a message must be an object or a string")
    kind = message.get("type") or message.get("role")
    kind = _LC_TYPES.get(kind, kind) if isinstance(kind, str) else kind
    if not isinstance(kind, str) or kind not in _FROM_LC:
        raise InvalidInput(f"{field}.type", f"unknown message type {kind!r}; use human, ai, tool or system")
    content = message.get("content", "")
    if not isinstance(content, str | list):
        raise InvalidInput(f"{field}.content", "content must be a string or a list of content parts")
    out: dict[str, Any] = {"role": _FROM_LC[kind], "content": content}
    msg_id = message.get("id")
    out["id"] = str(msg_id) if msg_id else str(uuid.uuid4())
    calls = message.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise InvalidInput(f"{field}.tool_calls", "must be a list")
        out["tool_calls"] = [_from_lc_call(c, f"{field}.tool_calls.{i}") for i, c in enumerate(calls)]
    if message.get("tool_call_id") is not None:
        out["tool_call_id"] = str(message["tool_call_id"])
    elif out["role"] == "tool":
        raise InvalidInput(f"{field}.tool_call_id", "a tool message needs the id of the call it answers")
    if message.get("name") is not None:
        out["name"] = str(message["name"])
    return out


def _from_lc_call(call: Any, field: str) -> dict[str, Any]:
    if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
        raise InvalidInput(field, "a tool call needs a name")
    args = call.get("args", call.get("arguments", {}))
    if not isinstance(args, Mapping):
        raise InvalidInput(f"{field}.args", "must be an object")
    return {"id": str(call.get("id") or uuid.uuid4()), "name": call["name"], "arguments": dict(args)}


def values_to_lc(values: Mapping[str, Any], thread_id: str) -> dict[str, Any]:
    """A session's values as LangGraph shows them: `messages` as LangChain message dicts."""
    out = dict(values)
    messages = values.get("messages")
    if isinstance(messages, list):
        out["messages"] = [to_lc_message(m, message_id(thread_id, i)) for i, m in enumerate(messages)]
    else:
        out["messages"] = []
    return out


def values_from_lc(values: Any, field: str) -> dict[str, Any]:
    """A values update from a client: messages converted, everything else kept."""
    if not isinstance(values, Mapping):
        raise InvalidInput(field, "values must be an object")
    out = dict(values)
    if "messages" in values:
        messages = values["messages"]
        items = messages if isinstance(messages, list) else [messages]
        out["messages"] = [from_lc_message(m, f"{field}.messages.{i}") for i, m in enumerate(items)]
    return out


def input_from_lc(value: Any) -> Any:
    """A run's input: `messages` (and `message`) converted; anything else passes to the agent as is."""
    if not isinstance(value, Mapping):
        return value
    out = dict(value)
    if "messages" in value:
        out["messages"] = values_from_lc({"messages": value["messages"]}, "input")["messages"]
    if isinstance(value.get("message"), Mapping):
        out["message"] = from_lc_message(value["message"], "input.message")
    return out


def input_to_lc(value: Any, run_id: str) -> Any:
    if not isinstance(value, Mapping) or not isinstance(value.get("messages"), list):
        return value
    return {**value, "messages": [to_lc_message(m, message_id(run_id, i)) for i, m in enumerate(value["messages"])]}


def ai_chunk(text: str, chunk_id: str) -> dict[str, Any]:
    return {
        "type": "AIMessageChunk",
        "content": text,
        "id": chunk_id,
        "name": None,
        "tool_calls": [],
        "tool_call_chunks": [],
        "invalid_tool_calls": [],
        "usage_metadata": None,
        **_LC_EXTRAS,
    }


# assistants ------------------------------------------------------------------------------------
def assistant_id(agent_name: str) -> str:
    """An agent's assistant id: the same UUID for the same name in every process."""
    return str(uuid.uuid5(_ASSISTANTS, agent_name))


def assistant_json(agent: AnyAgent, created_at: float) -> dict[str, Any]:
    return {
        "assistant_id": assistant_id(agent.name),
        "graph_id": agent.name,
        "name": agent.name,
        "description": agent.description or None,
        "config": {},
        "context": {},
        "metadata": {"created_by": "system", "corral_version": agent.version},
        "version": 1,
        "created_at": iso(created_at),
        "updated_at": iso(created_at),
    }


_MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["human", "ai", "tool", "system"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array"}]},
        "id": {"type": "string"},
    },
    "required": ["content"],
}


def assistant_schemas(agent: AnyAgent) -> dict[str, Any]:
    messages = {"type": "array", "items": _MESSAGE_SCHEMA}
    state = {"type": "object", "properties": {"messages": messages}, "title": f"{agent.name} state"}
    if isinstance(agent, Agent):
        input_schema: dict[str, Any] = {
            "type": "object",
            "properties": {"messages": messages, "message": {"anyOf": [{"type": "string"}, _MESSAGE_SCHEMA]}},
        }
        output_schema: dict[str, Any] = {
            "type": "object",
            "properties": {"answer": {"type": "string"}, "messages": messages},
        }
    else:  # an @agent function takes and returns whatever JSON its code does
        input_schema, output_schema = {"type": "object"}, {"type": "object"}
    return {
        "graph_id": agent.name,
        "input_schema": input_schema,
        "output_schema": output_schema,
        "state_schema": state,
        "config_schema": {"type": "object", "properties": {}},
        "context_schema": {"type": "object", "properties": {}},
    }


# threads ---------------------------------------------------------------------------------------
def thread_json(session: SessionRecord, interrupts: Mapping[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    return {
        "thread_id": session.id,
        "created_at": iso(session.created_at),
        "updated_at": iso(session.updated_at),
        "metadata": session.metadata,
        "status": session.status.value,
        "values": values_to_lc(session.values, session.id),
        "interrupts": dict(interrupts or {}),
        "config": {},
    }


def checkpoint_ref(thread_id: str, checkpoint_id: int | None) -> dict[str, Any]:
    return {
        "thread_id": thread_id,
        "checkpoint_ns": "",
        "checkpoint_id": str(checkpoint_id) if checkpoint_id is not None else None,
        "checkpoint_map": None,
    }


def state_json(
    thread_id: str,
    values: Mapping[str, Any],
    checkpoint: Checkpoint | None,
    parent: Checkpoint | None,
    interrupts: list[dict[str, Any]] | None = None,
    waiting_agent: str | None = None,
) -> dict[str, Any]:
    interrupts = interrupts or []
    tasks = []
    if waiting_agent is not None:
        tasks.append(
            {
                "id": interrupts[0]["id"] if interrupts else waiting_agent,
                "name": waiting_agent,
                "error": None,
                "interrupts": interrupts,
                "checkpoint": None,
                "state": None,
                "result": None,
            }
        )
    return {
        "values": values_to_lc(values, thread_id),
        "next": [waiting_agent] if waiting_agent is not None else [],
        "tasks": tasks,
        "checkpoint": checkpoint_ref(thread_id, checkpoint.id if checkpoint else None),
        "metadata": {
            **(checkpoint.metadata if checkpoint else {}),
            "run_id": checkpoint.run_id if checkpoint else None,
        },
        "created_at": iso(checkpoint.created_at) if checkpoint else None,
        "parent_checkpoint": checkpoint_ref(thread_id, parent.id) if parent else None,
        "interrupts": interrupts,
    }


def interrupt_json(run_id: str, seq: str | None) -> dict[str, Any]:
    """What a run waiting in `ctx.wait_for_message` shows as its interrupt; resume answers it."""
    return {
        "value": {"waiting_for": "message", "run_id": run_id, "step": seq},
        "id": f"{run_id}:{seq}",
    }


# runs ------------------------------------------------------------------------------------------
def run_status(status: RunStatus, waiting_for_message: bool = False) -> str:
    """Corral's run status as LangGraph's: pending, running, success, error, timeout, interrupted."""
    if status is RunStatus.WAITING:
        return "interrupted" if waiting_for_message else "running"
    return _RUN_STATUS[status]


_RUN_STATUS = {
    RunStatus.QUEUED: "pending",
    RunStatus.RUNNING: "running",
    RunStatus.SUCCEEDED: "success",
    RunStatus.FAILED: "error",
    RunStatus.CANCELLED: "interrupted",
    RunStatus.TIMED_OUT: "timeout",
    RunStatus.LIMIT_EXCEEDED: "error",
}

# LangGraph's run statuses as the Corral statuses a filter on them means.
RUN_STATUS_FILTER = {
    "pending": (RunStatus.QUEUED,),
    "running": (RunStatus.RUNNING, RunStatus.WAITING),
    "success": (RunStatus.SUCCEEDED,),
    "error": (RunStatus.FAILED, RunStatus.LIMIT_EXCEEDED),
    "timeout": (RunStatus.TIMED_OUT,),
    "interrupted": (RunStatus.CANCELLED, RunStatus.WAITING),
}

THREAD_STATUSES = tuple(s.value for s in SessionStatus)


def run_json(run: RunRecord, waiting_for_message: bool = False) -> dict[str, Any]:
    api = run.metadata.get(API_KEY) or {}
    user = {k: v for k, v in run.metadata.items() if k != API_KEY}
    updated = max(t for t in (run.created_at, run.started_at, run.finished_at) if t is not None)
    return {
        "run_id": run.id,
        "thread_id": run.session_id,
        "assistant_id": assistant_id(run.agent),
        "created_at": iso(run.created_at),
        "updated_at": iso(updated),
        "status": run_status(run.status, waiting_for_message),
        "metadata": {
            **user,
            "graph_id": run.agent,
            "corral_status": run.status.value,
            "corral_error": run.error,
            "corral_attempt": run.attempt,
        },
        "multitask_strategy": api.get("multitask_strategy", "enqueue"),
        "kwargs": {
            "input": input_to_lc(run.input, run.id),
            "config": api.get("config") or {},
            "context": api.get("context") or {},
            "stream_mode": api.get("stream_mode") or ["values"],
            "temporary": bool(api.get("temporary")),
        },
    }


def error_json(error: Mapping[str, Any] | None, status: RunStatus) -> dict[str, Any]:
    """A failed run's error as LangGraph's `{"error": type, "message": text}`."""
    error = error or {}
    return {
        "error": str(error.get("type") or status.value),
        "message": str(error.get("message") or f"the run ended {status.value}"),
    }


# store items -----------------------------------------------------------------------------------
def item_json(item: Item) -> dict[str, Any]:
    return {
        "namespace": list(item.namespace),
        "key": item.key,
        "value": item.value,
        "created_at": iso(item.created_at),
        "updated_at": iso(item.updated_at),
    }
