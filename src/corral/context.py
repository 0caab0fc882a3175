"""Context: the durable step API that agent code sees.

Every method that does work is a journaled step. Each call takes its position in the journal
synchronously, when it is made (not when it is awaited), so positions depend only on the order of
calls in the code, and `ctx.gather` gives each coroutine branch its own numbering: replay finds
every step where it was, however the event loop interleaves concurrent branches.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ._json import dumps, stable_hash
from .errors import ToolNotAllowed, UserError
from .models.base import ChatRequest, ChatResponse, Message, ToolSpec
from .store.base import StepKind
from .tools import Tool

if TYPE_CHECKING:
    from .engine.runner import Runner

T = TypeVar("T")


class StepCall(Awaitable[T]):
    """A step that already has its position; await it for the result."""

    __slots__ = ("_coro", "seq")

    def __init__(self, seq: str, coro: Awaitable[T]) -> None:
        self.seq = seq
        self._coro = coro

    def __await__(self) -> Generator[Any, None, T]:
        return self._coro.__await__()


class Context:
    """What a running agent can do durably. Passed to every agent as its first argument."""

    def __init__(self, runner: Runner) -> None:
        self._rt = runner
        run = runner.run
        self.run_id: str = run.id
        self.session_id: str = run.session_id
        self.attempt: int = run.attempt
        self.tenant: str = run.tenant
        self.principal: str | None = run.principal
        self.roles: frozenset[str] = frozenset(run.roles)
        self.agent: str = run.agent

    @property
    def idempotency_key(self) -> str:
        """`f"{run_id}:{seq}"` of the step being executed: pass it to outside systems so that a
        step re-executed after a crash does not repeat its effect."""
        from .engine.runner import step_key

        key = step_key.get()
        if key is None:
            raise UserError("ctx.idempotency_key is only available inside a step")
        return key

    @property
    def replaying(self) -> bool:
        """True while the code is re-running steps that the journal already holds."""
        return self._rt.replaying

    def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> StepCall[Any]:
        """Run `fn(*args, **kwargs)` once as a journaled step named `name` and return its result.

        Coroutine functions are awaited; plain functions run in a thread. The result must be
        JSON. An exception becomes a `StepError` (the original is its `__cause__`), journaled too.
        """
        if not callable(fn):
            raise UserError(f"ctx.step({name!r}, ...) needs a callable, got {fn!r}")
        rt = self._rt
        input_hash = stable_hash(name, args, kwargs)
        seq, looping = rt.allocate(StepKind.STEP, name, input_hash)

        async def execute() -> Any:
            if inspect.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            result = await asyncio.to_thread(fn, *args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return StepCall(
            seq, rt.run_step(seq, StepKind.STEP, name, input_hash, looping, execute, timeout=rt.limits.step_timeout)
        )

    def chat(
        self,
        messages: Iterable[Message | Mapping[str, Any] | str],
        *,
        model: str = "default",
        tools: Iterable[Tool | ToolSpec] = (),
        response_format: dict[str, Any] | None = None,
        **params: Any,
    ) -> StepCall[ChatResponse]:
        """A journaled LLM call on the model route `model`. Tokens stream to watchers as they come
        (first execution only); the complete response is recorded, and replay returns it."""
        rt = self._rt
        chat_model = rt.app.model(model)
        request = ChatRequest(
            messages=tuple(Message.from_any(m) for m in messages),
            tools=tuple(t.spec if isinstance(t, Tool) else t for t in tools),
            response_format=response_format,
            params=params,
        )
        input_hash = stable_hash(model, request.to_dict())
        seq, _ = rt.allocate(StepKind.CHAT, model, input_hash)
        return StepCall(seq, rt.chat_step(seq, model, chat_model, request, input_hash))

    def call_tool(self, tool: Tool | str, /, **arguments: Any) -> StepCall[Any]:
        """Run a tool once as a journaled step. Arguments are validated against its schema
        (ValueError names the field); a tool whose roles the run lacks raises ToolNotAllowed."""
        rt = self._rt
        t = rt.app.get_tool(tool, rt.agent) if isinstance(tool, str) else tool
        if not isinstance(t, Tool):
            raise UserError(f"ctx.call_tool needs a @tool, got {tool!r}")
        if not t.allowed_for(self.roles):
            missing = ", ".join(sorted(t.required_roles - self.roles))
            raise ToolNotAllowed(f"tool {t.name} requires the role(s) {missing}", run_id=self.run_id, step=t.name)
        checked = t.validate(arguments)
        input_hash = stable_hash(t.name, arguments)
        seq, looping = rt.allocate(StepKind.TOOL, t.name, input_hash)
        timeout = (
            min(x for x in (t.timeout, rt.limits.step_timeout) if x) if (t.timeout or rt.limits.step_timeout) else None
        )

        async def execute() -> Any:
            return await t.invoke(**checked)

        return StepCall(
            seq,
            rt.run_step(
                seq, StepKind.TOOL, t.name, input_hash, looping, execute, timeout=timeout, max_bytes=t.max_output_bytes
            ),
        )

    def sleep(self, seconds: float) -> StepCall[None]:
        """Sleep durably. A sleep of at least `park_threshold` seconds parks the run: it releases
        its worker slot and its coroutine, and resumes by replay on any worker when due."""
        if seconds < 0:
            raise UserError("ctx.sleep needs a non-negative number of seconds")
        rt = self._rt
        input_hash = stable_hash(seconds)
        seq, _ = rt.allocate(StepKind.SLEEP, "sleep", input_hash)
        return StepCall(seq, rt.sleep_step(seq, seconds, input_hash))

    def wait_for_message(self, timeout: float | None = None) -> StepCall[Any]:
        """Wait for the next message delivered to this session and return its payload, or None
        after `timeout` seconds. The run parks meanwhile: a waiting session costs a row."""
        if timeout is not None and timeout < 0:
            raise UserError("ctx.wait_for_message needs a non-negative timeout")
        rt = self._rt
        input_hash = stable_hash(timeout)
        seq, _ = rt.allocate(StepKind.MESSAGE, "message", input_hash)
        return StepCall(seq, rt.wait_step(seq, timeout, input_hash))

    def history(self) -> StepCall[list[dict[str, Any]]]:
        """The session's conversation before this run (its `messages` value), journaled so that
        a replay sees the same history."""
        rt = self._rt
        seq, _ = rt.allocate(StepKind.STEP, "history", "")

        async def execute() -> list[dict[str, Any]]:
            session = await rt.store.get_session(self.session_id, None)
            return list(session.values.get("messages") or [])

        return StepCall(seq, rt.run_step(seq, StepKind.STEP, "history", "", False, execute, timeout=None))

    def now(self) -> StepCall[float]:
        """The current time, journaled: replay sees the same value."""
        rt = self._rt
        seq, _ = rt.allocate(StepKind.STEP, "now", "")

        async def execute() -> float:
            import time

            return time.time()

        return StepCall(seq, rt.run_step(seq, StepKind.STEP, "now", "", False, execute, timeout=None))

    def emit(self, name: str, data: Any = None) -> None:
        """Send a custom event to the run's watchers. Not repeated when the code replays."""
        dumps(data, what=f"the data of event {name!r}")
        if not self._rt.replaying:
            self._rt.emit("custom", {"name": name, "data": data})

    async def gather(self, *aws: Awaitable[Any]) -> list[Any]:
        """Run steps or coroutines concurrently; results in order. The first error cancels the
        others and is raised. Pass steps (`ctx.step(...)`, `ctx.call_tool(...)`) or coroutines."""
        from .engine.runner import _Branch, branch

        prefix: str | None = None
        coros: list[Awaitable[Any]] = []
        for i, aw in enumerate(aws, 1):
            if isinstance(aw, StepCall):
                coros.append(aw._coro)
                continue
            if prefix is None:
                prefix = self._rt.branch_prefix()

            async def in_branch(aw: Awaitable[Any] = aw, key: str = f"{prefix}.{i}") -> Any:
                branch.set(_Branch(key))
                return await aw

            coros.append(in_branch())
        return await settle(coros)


async def settle(coros: list[Awaitable[Any]]) -> list[Any]:
    """Like asyncio.gather, but the first error cancels the rest, and a branch that parks or
    drains lets the others reach their own stopping point before the run unwinds."""
    from .engine.runner import Park, Release

    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    suspend: BaseException | None = None
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            failure = None
            for t in done:
                if t.cancelled() or t.exception() is None:
                    continue
                exc = t.exception()
                if isinstance(exc, Park) and isinstance(suspend, Park):
                    suspend = suspend.merge(exc)
                elif isinstance(exc, (Park, Release)):
                    suspend = suspend or exc
                elif failure is None:
                    failure = exc
            if failure is not None:
                raise failure
    finally:
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if suspend is not None:
        raise suspend
    return [t.result() for t in tasks]
