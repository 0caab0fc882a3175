"""Request bodies of the LangGraph-compatible API (validated; a 422 names the field)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# Ids are opaque strings: Corral sessions need not be UUIDs.
Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^/\s]+$")]
Label = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^.]+$")]
StreamModeName = Literal[
    "values",
    "messages",
    "updates",
    "events",
    "tasks",
    "checkpoints",
    "debug",
    "custom",
    "messages-tuple",
    "tools",
    "lifecycle",
]
MultitaskStrategy = Literal["reject", "interrupt", "rollback", "enqueue"]
Limit = Annotated[int, Field(ge=1, le=1000)]
Offset = Annotated[int, Field(ge=0, le=1_000_000)]


def nul_at(value: Any, where: str) -> str | None:
    """Where a NUL character is in a JSON value (PostgreSQL cannot store one), or None."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    if isinstance(value, dict):
        if any("\x00" in str(key) for key in value):
            return f"{where} (a key)"
        return next((found for k, v in value.items() if (found := nul_at(v, f"{where}.{k}"))), None)
    if isinstance(value, list | tuple):
        return next((found for i, v in enumerate(value) if (found := nul_at(v, f"{where}.{i}"))), None)
    return None


class _Body(BaseModel):
    # LangGraph clients send fields Corral has no use for (feedback_keys, langsmith_tracer, ...);
    # those are ignored. Fields that would change what a run does are declared and checked.
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="after")
    def _no_nul(self) -> _Body:
        for name in type(self).model_fields:
            if (found := nul_at(getattr(self, name), name)) is not None:
                raise ValueError(f"{found} contains a NUL character")
        return self


class AssistantSearch(_Body):
    metadata: dict[str, Any] | None = None
    graph_id: str | None = None
    name: str | None = None
    limit: Limit = 10
    offset: Offset = 0
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None


class ThreadCreate(_Body):
    thread_id: Id | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    supersteps: list[dict[str, Any]] | None = None
    ttl: dict[str, Any] | None = None


class ThreadPatch(_Body):
    metadata: dict[str, Any] = Field(default_factory=dict)
    ttl: dict[str, Any] | None = None


class ThreadSearch(_Body):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    ids: list[Id] | None = Field(default=None, max_length=1000)
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: Limit = 10
    offset: Offset = 0
    sort_by: Literal["thread_id", "status", "created_at", "updated_at", "state_updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None


class ThreadCount(_Body):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None


class StateUpdate(_Body):
    values: dict[str, Any] | list[Any] | None = None
    as_node: str | None = None
    checkpoint_id: str | None = None
    checkpoint: dict[str, Any] | None = None


class HistoryQuery(_Body):
    limit: Limit = 10
    before: str | dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None


class Command(_Body):
    resume: Any = None
    update: Any = None
    goto: Any = None


class RunCreate(_Body):
    assistant_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    input: Any = None
    command: Command | None = None
    metadata: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    stream_mode: StreamModeName | list[StreamModeName] = "values"
    stream_subgraphs: bool = False
    stream_resumable: bool = False
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    webhook: str | None = None
    checkpoint: dict[str, Any] | None = None
    checkpoint_id: str | None = None
    checkpoint_during: bool | None = None
    multitask_strategy: MultitaskStrategy = "reject"
    if_not_exists: Literal["create", "reject"] = "reject"
    on_disconnect: Literal["cancel", "continue"] = "continue"
    on_completion: Literal["delete", "keep"] = "delete"
    after_seconds: float | None = Field(default=None, ge=0)
    durability: Literal["sync", "async", "exit"] | None = None
    strict_resume: bool | None = None


class StorePut(_Body):
    namespace: list[Label] = Field(min_length=1, max_length=20)
    key: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    value: dict[str, Any]
    index: Any = None
    ttl: float | None = None


class StoreDelete(_Body):
    namespace: list[Label] = Field(min_length=1, max_length=20)
    key: Annotated[str, StringConstraints(min_length=1, max_length=500)]


class StoreSearch(_Body):
    namespace_prefix: list[Label] = Field(default_factory=list, max_length=20)
    filter: dict[str, Any] | None = None
    limit: Limit = 10
    offset: Offset = 0
    query: str | None = None
    refresh_ttl: bool | None = None


class StoreNamespaces(_Body):
    prefix: list[Label] | None = Field(default=None, max_length=20)
    suffix: list[Label] | None = Field(default=None, max_length=20)
    max_depth: Annotated[int, Field(ge=1, le=100)] | None = None
    limit: Limit = 100
    offset: Offset = 0
