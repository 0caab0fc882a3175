"""Circuit breakers: one per endpoint, opened by a failure rate over a rolling window of recent
calls, closed again by successful half-open probes after a cooldown."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import ConfigError

log = logging.getLogger("corral.models.breaker")


class BreakerState(StrEnum):
    CLOSED = "closed"  # calls pass; outcomes are counted
    OPEN = "open"  # calls are refused at once until the cooldown ends
    HALF_OPEN = "half_open"  # a few probe calls pass; their outcome closes or reopens


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When an endpoint's breaker opens: ``failure_rate`` of the last ``window`` calls (those
    younger than ``window_seconds``) failed, with at least ``min_calls`` of them. It stays open
    for ``cooldown`` seconds, then lets ``half_open_probes`` calls test the endpoint."""

    failure_rate: float = 0.5
    window: int = 20
    window_seconds: float = 60.0
    min_calls: int = 5
    cooldown: float = 30.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ConfigError(f"breaker failure_rate must be in (0, 1], got {self.failure_rate}")
        if self.window < 1 or self.min_calls < 1 or self.half_open_probes < 1:
            raise ConfigError("breaker window, min_calls and half_open_probes must be at least 1")
        if self.cooldown < 0 or self.window_seconds <= 0:
            raise ConfigError("breaker cooldown cannot be negative and window_seconds must be positive")


class CircuitBreaker:
    """A failure-rate breaker over a rolling window of recent calls."""

    def __init__(self, policy: BreakerPolicy | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._outcomes: collections.deque[tuple[float, bool]] = collections.deque(maxlen=self.policy.window)
        self._opened_at = 0.0
        self._probes = 0
        self._probe_successes = 0
        self.opened_total = 0
        self.short_circuited = 0
        self.transitions: collections.deque[tuple[float, BreakerState, BreakerState]] = collections.deque(maxlen=32)

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.policy.cooldown:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.policy.cooldown - (self._clock() - self._opened_at))

    def acquire(self) -> bool | None:
        """Permission for one call: None if refused, else whether the call is a half-open probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return False
        if state is BreakerState.HALF_OPEN and self._probes < self.policy.half_open_probes:
            self._probes += 1
            return True
        self.short_circuited += 1
        return None

    def release(self, probe: bool) -> None:
        """The call ended without a verdict (cancelled, or a bad request that says nothing of health)."""
        if probe:
            self._probes = max(0, self._probes - 1)

    def record(self, ok: bool, probe: bool) -> None:
        now = self._clock()
        if probe:
            self._probes = max(0, self._probes - 1)
            if self._state is not BreakerState.HALF_OPEN:
                return
            if not ok:
                self._open(now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self.policy.half_open_probes:
                self._outcomes.clear()
                self._move(BreakerState.CLOSED)
            return
        if self._state is not BreakerState.CLOSED:
            return  # a call let through before the breaker opened: its verdict is stale
        self._outcomes.append((now, ok))
        if not ok and self.failure_rate(now) >= self.policy.failure_rate:
            self._open(now)

    def failure_rate(self, now: float | None = None) -> float:
        """The failure rate over the window, or 0.0 while it holds fewer than ``min_calls``."""
        now = self._clock() if now is None else now
        recent = [ok for t, ok in self._outcomes if now - t <= self.policy.window_seconds]
        if len(recent) < self.policy.min_calls:
            return 0.0
        return recent.count(False) / len(recent)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self.opened_total += 1
        self._move(BreakerState.OPEN)

    def _move(self, to: BreakerState) -> None:
        if to is not self._state:
            log.info("circuit breaker %s -> %s", self._state.value, to.value)
            self.transitions.append((self._clock(), self._state, to))
        self._state = to
        self._probes = 0
        self._probe_successes = 0

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "state": self.state.value,
            "failure_rate": round(self.failure_rate(now), 4),
            "window_calls": sum(1 for t, _ in self._outcomes if now - t <= self.policy.window_seconds),
            "opened_total": self.opened_total,
            "short_circuited": self.short_circuited,
            "retry_after": round(self.retry_after(), 3),
        }


__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker"]
