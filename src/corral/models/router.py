"""Model routes: an ordered list of endpoints behind one ChatModel, with timeouts, retries with
backoff, failover, a context-length fallback and a circuit breaker per endpoint.

Failover is only possible before the first token: once text has been streamed to the caller it
cannot be taken back, so a later failure raises StreamBroken and the step fails cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import (
    AuthenticationFailed,
    CircuitOpen,
    ConfigError,
    ContextTooLong,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    StreamBroken,
)
from .base import ChatModel, ChatRequest, ChatResponse, Delta
from .breaker import BreakerPolicy, CircuitBreaker

_PHASES = {
    "deadline": "the route's deadline passed",
    "response": "no complete response within the endpoint's timeout",
    "first token": "no first token within the endpoint's ttft_timeout",
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` per endpoint (the first included) on retryable errors, waiting a full-jitter
    exponential backoff (uniform in 0 … min(max_delay, base_delay·2ⁿ)) between them. A 429's
    Retry-After is honoured when it is at most ``max_retry_after``; longer, the route fails over."""

    attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 4.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"retry attempts must be at least 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ConfigError("retry delays cannot be negative")

    def backoff(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2**retry))


@dataclass
class Endpoint:
    """One model in a route, with its per-attempt limits: ``timeout`` from request to the final
    response, ``ttft_timeout`` from request to the first token (or the response)."""

    model: ChatModel
    timeout: float | None = None
    ttft_timeout: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.model.name
        for what in ("timeout", "ttft_timeout"):
            value = getattr(self, what)
            if value is not None and value <= 0:
                raise ConfigError(f"endpoint {self.name}: {what} must be positive, got {value}")


@dataclass
class _Slot:
    endpoint: Endpoint
    breaker: CircuitBreaker
    calls: int = 0
    failures: int = 0
    successes: int = 0


@dataclass
class _Progress:
    first: bool = False  # a token (or the response) has arrived
    chunks: int = 0  # text chunks handed to the caller


@dataclass
class _Counters:
    calls: int = 0
    successes: int = 0
    failures: int = 0
    attempts: int = 0
    retries: int = 0
    failovers: int = 0
    context_fallbacks: int = 0
    stream_broken: int = 0


class Router(ChatModel):
    """A model route: tries its endpoints in order until one answers.

    Per call: ``timeout`` is the total deadline over every attempt and wait. Per endpoint:
    ``retry.attempts`` tries on retryable errors (5xx, 429, timeouts, connection failures) with
    backoff; a bad request (400) fails the call at once; an authentication failure (401/403)
    moves on to the next endpoint without retrying. ``ContextTooLong`` goes to
    ``context_fallback`` when there is one. Each endpoint has a circuit breaker, so a dead
    provider costs one fast refusal per call while it is open. ``max_repeated_chunks`` > 0 stops
    a stream that repeats one chunk that many times in a row (the runner has its own guard,
    ``Limits.max_repeated_chunks``; this one is for routes used outside runs).
    """

    def __init__(
        self,
        name: str,
        endpoints: Sequence[Endpoint | ChatModel],
        *,
        timeout: float | None = None,
        context_fallback: Endpoint | ChatModel | None = None,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        max_repeated_chunks: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not endpoints:
            raise ConfigError(f"model route {name!r} has no endpoints")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"model route {name!r}: timeout must be positive, got {timeout}")
        self.name = name
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_repeated_chunks = max_repeated_chunks
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        policy = breaker or BreakerPolicy()
        self._slots = [_Slot(_endpoint(e), CircuitBreaker(policy, clock=clock)) for e in endpoints]
        self._fallback = (
            _Slot(_endpoint(context_fallback), CircuitBreaker(policy, clock=clock))
            if context_fallback is not None
            else None
        )
        self._n = _Counters()

    def __repr__(self) -> str:
        names = ", ".join(s.endpoint.name for s in self._slots)
        return f"<Router {self.name} [{names}]>"

    @property
    def endpoints(self) -> list[Endpoint]:
        return [s.endpoint for s in self._slots]

    def breaker(self, endpoint: str | int) -> CircuitBreaker:
        """The breaker of an endpoint, by position or name (the context fallback by its name)."""
        if isinstance(endpoint, int):
            return self._slots[endpoint].breaker
        for s in self._every_slot():
            if s.endpoint.name == endpoint:
                return s.breaker
        raise KeyError(endpoint)

    def stats(self) -> dict[str, Any]:
        """Counters of the route and the state of each endpoint's breaker."""

        def one(slot: _Slot, role: str) -> dict[str, Any]:
            return {
                "name": slot.endpoint.name,
                "role": role,
                "calls": slot.calls,
                "successes": slot.successes,
                "failures": slot.failures,
                **slot.breaker.snapshot(),
            }

        n = self._n
        endpoints = [one(s, "primary" if i == 0 else "fallback") for i, s in enumerate(self._slots)]
        if self._fallback is not None:
            endpoints.append(one(self._fallback, "context_fallback"))
        return {
            "route": self.name,
            "calls": n.calls,
            "successes": n.successes,
            "failures": n.failures,
            "attempts": n.attempts,
            "retries": n.retries,
            "failovers": n.failovers,
            "context_fallbacks": n.context_fallbacks,
            "stream_broken": n.stream_broken,
            "endpoints": endpoints,
        }

    async def load(self) -> None:
        """Load every endpoint's model (a failover to the embedded model must not wait for it)."""
        await asyncio.gather(*(s.endpoint.model.load() for s in self._every_slot()))

    async def aclose(self) -> None:
        for slot in self._every_slot():
            await slot.endpoint.model.aclose()

    def _every_slot(self) -> list[_Slot]:
        """The endpoints in order, then the context fallback if there is one."""
        return self._slots + ([self._fallback] if self._fallback else [])

    # the call ------------------------------------------------------------------------------
    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta | ChatResponse]:
        self._n.calls += 1
        deadline = self._clock() + self.timeout if self.timeout else None
        failures: list[tuple[str, ProviderError]] = []
        chain = list(self._slots)
        on_fallback = False
        i = 0
        while i < len(chain):
            slot = chain[i]
            i += 1
            if failures and not on_fallback:
                self._n.failovers += 1
            for attempt in range(self.retry.attempts):
                if deadline is not None and self._clock() >= deadline:
                    self._n.failures += 1
                    raise self._deadline_error(failures)
                permit = slot.breaker.acquire()
                if permit is None:
                    wait = slot.breaker.retry_after()
                    refused = CircuitOpen(
                        f"{slot.endpoint.name}: circuit open for {wait:.1f}s more",
                        provider=slot.endpoint.name,
                        retry_after=wait,
                    )
                    failures.append((slot.endpoint.name, refused))
                    break
                if attempt:
                    self._n.retries += 1
                self._n.attempts += 1
                slot.calls += 1
                progress = _Progress()
                try:
                    async with contextlib.aclosing(self._attempt(slot.endpoint, request, deadline, progress)) as items:
                        async for item in items:
                            if isinstance(item, ChatResponse):
                                slot.breaker.record(True, permit)
                                slot.successes += 1
                                self._n.successes += 1
                                yield item
                                return
                            yield item
                except ProviderError as exc:
                    self._count_failure(slot, exc, permit)
                    failures.append((slot.endpoint.name, exc))
                    action = self._after_failure(exc, progress, attempt, deadline, on_fallback)
                    if action == "raise":
                        self._n.failures += 1
                        if progress.chunks:
                            self._n.stream_broken += 1
                            if not isinstance(exc, StreamBroken):
                                raise _annotated(
                                    StreamBroken(
                                        f"{slot.endpoint.name}: stream failed after {progress.chunks} chunks: {exc}",
                                        provider=slot.endpoint.name,
                                        chunks=progress.chunks,
                                        status=exc.status,
                                    ),
                                    self.name,
                                    failures,
                                ) from exc
                        _annotated(exc, self.name, failures)
                        raise
                    if action == "context_fallback":
                        assert self._fallback is not None
                        self._n.context_fallbacks += 1
                        chain, i, on_fallback = [self._fallback], 0, True
                        break
                    if action == "next":
                        break
                    await self._sleep(action)
                except BaseException:
                    slot.breaker.release(permit)
                    raise
        self._n.failures += 1
        if not failures:  # pragma: no cover - every way out of the loop records a failure
            raise ProviderError(f"route {self.name}: no endpoint was tried", provider=self.name)
        raise _annotated(self._final_error(failures), self.name, failures)

    async def _attempt(
        self, endpoint: Endpoint, request: ChatRequest, deadline: float | None, progress: _Progress
    ) -> AsyncIterator[Delta | ChatResponse]:
        """One call to one endpoint under its timeouts; the final response ends it."""
        started = self._clock()
        attempt_end = started + endpoint.timeout if endpoint.timeout else None
        first_by = started + endpoint.ttft_timeout if endpoint.ttft_timeout else None
        last, repeats = None, 0
        stream = endpoint.model.stream(request).__aiter__()
        try:
            while True:
                limits = [(deadline, "deadline"), (attempt_end, "response")]
                if not progress.first:
                    limits.append((first_by, "first token"))
                active = [(t, phase) for t, phase in limits if t is not None]
                if active:
                    until, phase = min(active)
                    cm = asyncio.timeout(max(0.0, until - self._clock()))
                    try:
                        async with cm:
                            item = await anext(stream)
                    except StopAsyncIteration:
                        break
                    except TimeoutError as exc:
                        if not cm.expired():
                            raise _foreign_timeout(endpoint, exc) from exc
                        raise ProviderTimeout(
                            f"{endpoint.name}: {_PHASES[phase]} ({until - started:.3g}s after the request)",
                            provider=endpoint.name,
                            phase=phase,
                        ) from exc
                else:
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:
                        break
                    except TimeoutError as exc:
                        raise _foreign_timeout(endpoint, exc) from exc
                if isinstance(item, ChatResponse):
                    progress.first = True
                    yield item
                    return
                if not item.text:
                    continue
                progress.first = True
                if self.max_repeated_chunks:
                    chunk = item.text.strip()
                    repeats = repeats + 1 if chunk and chunk == last else 1
                    last = chunk
                    if repeats >= self.max_repeated_chunks:
                        raise StreamBroken(
                            f"{endpoint.name}: the chunk {chunk[:40]!r} repeated {repeats} times in a row",
                            provider=endpoint.name,
                            chunks=progress.chunks,
                        )
                progress.chunks += 1
                yield item
        finally:
            await stream.aclose()
        raise MalformedResponse(f"{endpoint.name}: the stream ended without a response", provider=endpoint.name)

    def _after_failure(
        self, exc: ProviderError, progress: _Progress, attempt: int, deadline: float | None, on_fallback: bool
    ) -> str | float:
        """What follows a failed attempt: "raise", "next" (endpoint), "context_fallback", or
        the seconds to wait before retrying the same endpoint."""
        if progress.chunks:
            return "raise"  # text already reached the caller: it cannot be taken back
        if isinstance(exc, ContextTooLong):
            return "context_fallback" if self._fallback is not None and not on_fallback else "raise"
        if isinstance(exc, AuthenticationFailed):
            return "next"  # this endpoint's key is wrong: another endpoint may have a good one
        if not exc.retryable:
            return "raise"
        if attempt + 1 >= self.retry.attempts:
            return "next"
        delay = self.retry.backoff(attempt, self._rng)
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            if exc.retry_after > self.retry.max_retry_after:
                return "next"  # the provider asks for a long wait: fail over instead
            delay = exc.retry_after
        if deadline is not None and self._clock() + delay >= deadline:
            return "next"  # no time to wait for this endpoint: try the next one now
        return delay

    def _count_failure(self, slot: _Slot, exc: ProviderError, permit: bool) -> None:
        # A bad request says nothing about the endpoint's health; everything else does.
        if exc.retryable or isinstance(exc, (AuthenticationFailed, StreamBroken)):
            slot.failures += 1
            slot.breaker.record(False, permit)
        else:
            slot.breaker.release(permit)

    def _deadline_error(self, failures: list[tuple[str, ProviderError]]) -> ProviderError:
        return _annotated(
            ProviderTimeout(
                f"route {self.name}: no answer within its deadline of {self.timeout}s",
                provider=self.name,
                phase="deadline",
            ),
            self.name,
            failures,
        )

    def _final_error(self, failures: list[tuple[str, ProviderError]]) -> ProviderError:
        errors = [e for _, e in failures]
        if all(isinstance(e, CircuitOpen) for e in errors):
            wait = min((e.retry_after or 0.0) for e in errors)
            return CircuitOpen(
                f"route {self.name}: every endpoint's circuit is open", provider=self.name, retry_after=wait
            )
        # The most telling failure: the last one that actually reached a provider.
        return next((e for e in reversed(errors) if not isinstance(e, CircuitOpen)), errors[-1])


def _endpoint(value: Endpoint | ChatModel) -> Endpoint:
    return value if isinstance(value, Endpoint) else Endpoint(value)


def _foreign_timeout(endpoint: Endpoint, exc: TimeoutError) -> ProviderTimeout:
    # A model that lets a bare TimeoutError out: still a timeout of that endpoint.
    return ProviderTimeout(f"{endpoint.name}: timed out: {exc}", provider=endpoint.name)


def _annotated(exc: ProviderError, route: str, failures: list[tuple[str, ProviderError]]) -> ProviderError:
    tried = "; ".join(f"{name}: {type(e).__name__}" for name, e in failures)
    note = f"route {route} tried: {tried}"
    if note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)
    return exc


__all__ = ["Endpoint", "RetryPolicy", "Router"]
