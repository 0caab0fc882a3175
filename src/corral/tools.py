"""Tools: `@tool` turns a function into something a model can call, with a JSON schema from its
signature and docstring, a timeout, an output cap and the roles a caller needs."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import pydantic

from .errors import ToolDefinitionError
from .models.base import ToolSpec

_ARGS_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$", re.MULTILINE)
_ARG_LINE = re.compile(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)$")


@dataclass(frozen=True, eq=False)
class Tool:
    """A callable tool. Call `.invoke(**arguments)` to run it; calling the object calls the function."""

    fn: Callable[..., Any]
    name: str
    description: str
    parameters: dict[str, Any]
    timeout: float | None = None
    required_roles: frozenset[str] = frozenset()
    max_output_bytes: int = 64 * 1024
    _args_model: type[pydantic.BaseModel] | None = field(default=None, repr=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Arguments checked and coerced against the schema; raises ValueError naming the field."""
        if self._args_model is None:
            return dict(arguments)
        try:
            model = self._args_model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(arguments)'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"invalid arguments for tool {self.name}: {problems}") from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    def allowed_for(self, roles: frozenset[str] | set[str] | tuple[str, ...]) -> bool:
        return self.required_roles <= set(roles)

    async def invoke(self, **arguments: Any) -> Any:
        """Run the tool: coroutines are awaited, plain functions run in a thread."""
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**arguments)
        return await asyncio.to_thread(self.fn, **arguments)


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    required_roles: tuple[str, ...] | list[str] | frozenset[str] = (),
    max_output_bytes: int = 64 * 1024,
) -> Any:
    """Make a function a tool; usable bare (`@tool`) or with options (`@tool(timeout=10)`)."""

    def wrap(f: Callable[..., Any]) -> Tool:
        params, model = _schema(f)
        return Tool(
            fn=f,
            name=name or f.__name__,
            description=description or _summary(f),
            parameters=params,
            timeout=timeout,
            required_roles=frozenset(required_roles),
            max_output_bytes=max_output_bytes,
            _args_model=model,
        )

    return wrap(fn) if fn is not None else wrap


def _summary(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    head = _ARGS_SECTION.split(doc)[0]
    return " ".join(head.split("\n\n")[0].split())


def _arg_docs(fn: Callable[..., Any]) -> dict[str, str]:
    doc = inspect.getdoc(fn) or ""
    parts = _ARGS_SECTION.split(doc, maxsplit=1)
    if len(parts) < 3:
        return {}
    out = {}
    for line in parts[2].splitlines():
        m = _ARG_LINE.match(line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _schema(fn: Callable[..., Any]) -> tuple[dict[str, Any], type[pydantic.BaseModel]]:
    try:
        sig = inspect.signature(fn)
        hints = get_type_hints(fn)
    except (TypeError, ValueError, NameError) as exc:
        raise ToolDefinitionError(f"cannot read the signature of {fn!r}: {exc}") from exc
    docs = _arg_docs(fn)
    fields: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ToolDefinitionError(f"tool {fn.__name__}: *args and **kwargs cannot be described to a model")
        annotation = hints.get(pname, Any)
        default = ... if p.default is p.empty else p.default
        fields[pname] = (annotation, pydantic.Field(default, description=docs.get(pname)))
    try:
        model = pydantic.create_model(f"{fn.__name__}_arguments", **fields)
        schema = model.model_json_schema()
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ToolDefinitionError(f"tool {fn.__name__}: its parameters have no JSON schema: {exc}") from exc
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema, model
