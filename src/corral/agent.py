"""Agents: `@agent` for code that orchestrates its own steps, `Agent` for the standard
tool-calling loop, and the `Limits` every run is held to."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._json import dumps, stable_hash
from .errors import StepError, ToolNotAllowed, UserError
from .models.base import Message, Role, approx_tokens
from .tools import Tool

if TYPE_CHECKING:
    from .context import Context

from .context import StepCall


@dataclass(frozen=True, slots=True)
class Limits:
    """What one run may use. Each limit stops the run with status `limit_exceeded` (or
    `timed_out` for time) and names the step that crossed it."""

    max_steps: int = 500
    run_timeout: float = 900.0  # seconds of execution; time parked does not count
    step_timeout: float = 120.0
    max_total_tokens: int = 500_000
    loop_threshold: int = 5  # this many identical tool calls or steps in a row stop the run; 0: off
    max_repeated_chunks: int = 50  # this many identical streamed chunks in a row stop the run; 0: off

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise UserError(f"Limits.{f.name} cannot be negative")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Limits:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


AgentFn = Callable[["Context", Any], Awaitable[Any]]


class AgentFunction:
    """An agent written as an async function of `(ctx, input)`; made by `@agent`."""

    def __init__(self, fn: AgentFn, name: str, limits: Limits, description: str) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise UserError(f"@agent needs an async function, got {fn!r}")
        self.fn = fn
        self.name = name
        self.limits = limits
        self.description = description
        self.tools: tuple[Tool, ...] = ()
        self.version = stable_hash("fn", name, _source(fn))

    async def execute(self, ctx: Context, input: Any) -> Any:
        return await self.fn(ctx, input)

    def __repr__(self) -> str:
        return f"<agent {self.name} {self.version}>"


def agent(
    fn: AgentFn | None = None, *, name: str | None = None, limits: Limits | None = None, description: str | None = None
) -> Any:
    """Register an async function `(ctx, input) -> output` as an agent."""

    def wrap(f: AgentFn) -> AgentFunction:
        return AgentFunction(f, name or f.__name__, limits or Limits(), description or (inspect.getdoc(f) or ""))

    return wrap(fn) if fn is not None else wrap


class Agent:
    """The standard tool-calling loop over durable steps: the model answers or asks for tools;
    requested tools run concurrently, each its own step; repeat until an answer or a limit.

    Input: `{"messages": [...]}`, `{"message": "..."}` or a plain string. Output:
    `{"answer": text, "messages": [the new messages as dicts]}`.
    A tool that fails (or times out) is reported to the model as the tool's result when
    `tool_errors="return"` (the default); with `"raise"` the run fails.
    """

    def __init__(
        self,
        name: str,
        instructions: str = "",
        *,
        model: str = "default",
        tools: Sequence[Tool] = (),
        limits: Limits | None = None,
        tool_errors: str = "return",
        description: str = "",
        max_context_tokens: int = 16_000,
        use_history: bool = True,
    ) -> None:
        if tool_errors not in ("return", "raise"):
            raise UserError("Agent.tool_errors must be 'return' or 'raise'")
        for t in tools:
            if not isinstance(t, Tool):
                raise UserError(f"Agent {name}: {t!r} is not a tool; decorate it with @tool")
        self.name = name
        self.instructions = instructions
        self.model = model
        self.tools = tuple(tools)
        self.limits = limits or Limits()
        self.tool_errors = tool_errors
        self.max_context_tokens = max_context_tokens
        self.use_history = use_history
        self.description = description or instructions[:200]
        self._by_name = {t.name: t for t in self.tools}
        self.version = stable_hash(
            "agent", name, instructions, model, [t.spec.to_dict() for t in self.tools], _source(Agent.execute)
        )

    def __repr__(self) -> str:
        return f"<Agent {self.name} {self.version}>"

    async def execute(self, ctx: Context, input: Any) -> Any:
        system = [Message.system(self.instructions)] if self.instructions else []
        past = [Message.from_any(m) for m in await ctx.history()] if self.use_history else []
        turn = _input_messages(input)
        produced: list[Message] = []
        offered = [t for t in self.tools if t.allowed_for(ctx.roles)]
        while True:
            window = fit_context(system, past, turn + produced, self.max_context_tokens)
            reply = await ctx.chat(window, model=self.model, tools=offered)
            produced.append(reply.message)
            if not reply.tool_calls:
                return {"answer": reply.text, "messages": [m.to_dict() for m in produced]}
            calls = [self._start_call(ctx, call.name, call.arguments) for call in reply.tool_calls]
            results = await ctx.gather(*calls)
            for call, result in zip(reply.tool_calls, results, strict=True):
                produced.append(Message.tool(call.id, result, call.name))

    def _start_call(self, ctx: Context, name: str, arguments: dict[str, Any]) -> Awaitable[str]:
        # The step is allocated here, synchronously, so its sequence number does not depend on
        # how the event loop schedules the concurrent calls.
        tool_ = self._by_name.get(name)
        if tool_ is None:
            return _value(f"error: there is no tool named {name!r}")
        try:
            pending = ctx.call_tool(tool_, **arguments)
        except (ValueError, ToolNotAllowed) as exc:
            return _value(f"error: {exc}")
        return StepCall(pending.seq, self._settle(pending))  # keeps its position: no gather branch needed

    async def _settle(self, pending: Awaitable[Any]) -> str:
        try:
            result = await pending
        except StepError as exc:
            if self.tool_errors == "raise":
                raise
            return f"error: {exc.error_type}: {exc.args[0]}"
        return result if isinstance(result, str) else dumps(result, what="tool result")


def fit_context(system: list[Message], past: list[Message], current: list[Message], budget: int) -> list[Message]:
    """The messages to send: the system prompt and the current turn always; past turns newest
    first while they fit `budget` tokens (oldest dropped first, whole turns at a time)."""
    used = sum(_tokens(m) for m in system + current)
    kept: list[Message] = []
    turns = _turns(past)
    for group in reversed(turns):
        cost = sum(_tokens(m) for m in group)
        if used + cost > budget:
            break
        kept[:0] = group
        used += cost
    return system + kept + current


def _turns(messages: list[Message]) -> list[list[Message]]:
    """Split a conversation into turns, each starting at a user message, so that a tool result is
    never separated from the call that asked for it."""
    turns: list[list[Message]] = []
    for m in messages:
        if m.role is Role.SYSTEM:
            continue
        if m.role is Role.USER or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return turns


def _tokens(m: Message) -> int:
    return approx_tokens(m.content) + sum(approx_tokens(str(c.arguments)) + 4 for c in m.tool_calls) + 4


async def _value(text: str) -> str:
    return text


def _input_messages(input: Any) -> list[Message]:
    if isinstance(input, str):
        return [Message.user(input)]
    if isinstance(input, Mapping):
        if "messages" in input:
            return [Message.from_any(m) for m in input["messages"]]
        if "message" in input:
            return [Message.from_any(input["message"])]
        if "input" in input and isinstance(input["input"], str):
            return [Message.user(input["input"])]
    raise UserError("Agent input must be a string, {'message': ...} or {'messages': [...]}")


def _source(fn: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        return code.co_code.hex() if code else repr(fn)


AnyAgent = AgentFunction | Agent
