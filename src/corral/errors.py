"""Corral's one error tree, split by audience.

CorralError                    catchable errors (``except CorralError``)
├── UserError                  a mistake of the developer using Corral: fix the code or config
│   ├── ConfigError            a setting is missing or malformed
│   ├── AgentNotFound          no agent of that name is registered
│   ├── NotSerializable        a step result, input or output is not JSON
│   └── ToolDefinitionError    a tool's signature cannot become a JSON schema
├── RunError                   something inside a run went wrong; carries run id and step
│   ├── StepError              a journaled step raised; replay raises the same StepError
│   │   └── StepTimeout        a step ran past its timeout
│   ├── ToolNotAllowed         the run's principal lacks a role the tool requires
│   └── PayloadTooLarge        a result or event is over its byte limit
├── ProviderError              an LLM provider failed (``provider``, ``retryable``, ``status``, ``retry_after``)
│   ├── RateLimited            429: the provider asks to wait ``retry_after`` seconds
│   ├── ProviderTimeout        no connection, first token or answer in time
│   ├── ProviderUnavailable    5xx or overloaded: the provider is down or shedding load
│   │   └── ConnectionFailed   the connection could not be made or dropped before any output
│   ├── MalformedResponse      the provider answered something that is not its wire format
│   ├── StreamBroken           a stream failed after output was delivered: no failover possible
│   ├── CircuitOpen            the endpoint's circuit breaker is open: not called at all
│   ├── AuthenticationFailed   401/403: the key is missing, wrong or lacks access (not retryable)
│   └── BadRequest             4xx: the request itself is wrong (not retryable)
│       └── ContextTooLong     the prompt does not fit the model's context window
└── StoreError                 the store failed or refused
    ├── RunNotFound            no run with that id (in that tenant)
    └── SessionNotFound        no session with that id (in that tenant)

RunInterrupt (BaseException)   stops a run; ``except Exception`` in agent code cannot swallow it
├── RunCancelled               the run was cancelled
├── LimitExceeded              a limit stopped the run (``limit`` and ``step`` name which)
├── NonDeterminismError        replay met a step that differs from the journal
└── LeaseLost                  this worker no longer owns the run (fenced out); it abandons it
"""

from __future__ import annotations

from typing import Any


class CorralError(Exception):
    """Root of Corral's catchable errors."""


class UserError(CorralError):
    """A mistake in how Corral is used: the message says what to change."""


class ConfigError(UserError):
    """A setting is missing or malformed."""


class AgentNotFound(UserError):
    def __init__(self, name: str, known: list[str] | None = None) -> None:
        self.name = name
        hint = f"; registered agents: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"no agent named {name!r}{hint}")


class NotSerializable(UserError):
    """A value that must cross the durable boundary is not JSON-serializable."""


class ToolDefinitionError(UserError):
    """A tool's signature or docstring cannot be turned into a JSON schema."""


class RunError(CorralError):
    """Something inside a run went wrong."""

    def __init__(self, message: str, *, run_id: str | None = None, step: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.step = step


class StepError(RunError):
    """A journaled step raised.

    The first execution chains the original exception as ``__cause__``; a replay raises the same
    ``StepError`` (same ``error_type`` and message) from the journal without running the step.
    """

    def __init__(self, message: str, *, error_type: str, step: str, run_id: str | None = None) -> None:
        super().__init__(message, run_id=run_id, step=step)
        self.error_type = error_type

    def __str__(self) -> str:
        return f"step {self.step} raised {self.error_type}: {self.args[0]}"


class StepTimeout(StepError):
    """A step ran past its timeout (the tool's own or the run's ``step_timeout``)."""


class ToolNotAllowed(RunError):
    """The run's principal lacks a role that the tool requires."""


class PayloadTooLarge(RunError):
    """A payload is over its byte limit."""

    def __init__(self, message: str, *, size: int, limit: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.size = size
        self.limit = limit


class ProviderError(CorralError):
    """An LLM provider failed; `retryable` says whether the same call may succeed if repeated."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool = True,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class RateLimited(ProviderError):
    """The provider refused with 429; ``retry_after`` (seconds) is its advice when it gave one."""

    def __init__(
        self, message: str, *, provider: str, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(message, provider=provider, retryable=True, status=status, retry_after=retry_after)


class ProviderTimeout(ProviderError):
    """No connection, first token or complete answer within its timeout (``phase`` says which)."""

    def __init__(self, message: str, *, provider: str, phase: str = "response", status: int | None = None) -> None:
        super().__init__(message, provider=provider, retryable=True, status=status)
        self.phase = phase


class ProviderUnavailable(ProviderError):
    """The provider is down or shedding load (5xx, overloaded); another attempt may succeed."""

    def __init__(
        self, message: str, *, provider: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, provider=provider, retryable=True, status=status, retry_after=retry_after)


class ConnectionFailed(ProviderUnavailable):
    """The connection could not be made, or dropped before the provider sent any output."""


class MalformedResponse(ProviderError):
    """The provider's answer does not follow its wire format (bad JSON, missing fields)."""

    def __init__(self, message: str, *, provider: str, status: int | None = None) -> None:
        super().__init__(message, provider=provider, retryable=True, status=status)


class StreamBroken(ProviderError):
    """A stream failed after output had been delivered (``chunks`` of it). What was streamed
    cannot be taken back, so no retry or failover happens: the step fails cleanly."""

    def __init__(self, message: str, *, provider: str, chunks: int = 0, status: int | None = None) -> None:
        super().__init__(message, provider=provider, retryable=False, status=status)
        self.chunks = chunks


class CircuitOpen(ProviderError):
    """The endpoint's circuit breaker is open; ``retry_after`` is the time left in its cooldown."""

    def __init__(self, message: str, *, provider: str, retry_after: float | None = None) -> None:
        super().__init__(message, provider=provider, retryable=True, retry_after=retry_after)


class AuthenticationFailed(ProviderError):
    """401 or 403: the API key is missing, wrong or lacks access. Repeating will not help."""

    def __init__(self, message: str, *, provider: str, status: int | None = 401) -> None:
        super().__init__(message, provider=provider, retryable=False, status=status)


class BadRequest(ProviderError):
    """The provider rejected the request itself (4xx); the same request fails again."""

    def __init__(self, message: str, *, provider: str, status: int | None = 400) -> None:
        super().__init__(message, provider=provider, retryable=False, status=status)


class ContextTooLong(BadRequest):
    """The prompt does not fit the model's context window; a route may send it to a larger model."""


class StoreError(CorralError):
    """The store failed or refused an operation."""


class RunNotFound(StoreError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r}")
        self.run_id = run_id


class SessionNotFound(StoreError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id!r}")
        self.session_id = session_id


class SessionExists(StoreError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} exists already")
        self.session_id = session_id


class Conflict(StoreError):
    """The operation conflicts with the resource's current state."""


class RunInterrupt(BaseException):
    """Stops a run. Derives from BaseException so that ``except Exception`` cannot swallow it."""


class RunCancelled(RunInterrupt):
    """The run was cancelled."""


class LimitExceeded(RunInterrupt):
    """A limit stopped the run: ``limit`` names it, ``step`` names the step that crossed it."""

    def __init__(self, limit: str, *, step: str | None, detail: str = "") -> None:
        self.limit = limit
        self.step = step
        self.detail = detail
        where = f" at step {step}" if step else ""
        super().__init__(f"limit {limit} exceeded{where}" + (f": {detail}" if detail else ""))


class NonDeterminismError(RunInterrupt):
    """Replay met a step that differs from the one recorded at the same position."""

    def __init__(self, seq: str, recorded: dict[str, Any], current: dict[str, Any]) -> None:
        self.seq = seq
        self.recorded = recorded
        self.current = current
        self.step = f"#{seq} {current.get('kind')}:{current.get('name')}"
        diffs = [k for k in ("kind", "name", "input_hash") if recorded.get(k) != current.get(k)]
        super().__init__(
            f"step #{seq} differs from the journal ({', '.join(diffs)}): recorded "
            f"{recorded.get('kind')}:{recorded.get('name')} (input {recorded.get('input_hash')}), "
            f"code now runs {current.get('kind')}:{current.get('name')} (input {current.get('input_hash')})"
        )


class LeaseLost(RunInterrupt):
    """This worker's claim on the run is no longer current; its writes are rejected."""

    def __init__(self, run_id: str, attempt: int) -> None:
        self.run_id = run_id
        self.attempt = attempt
        super().__init__(f"run {run_id}: attempt {attempt} was fenced out")
