"""Typed settings: read from the environment once, at the edge, and passed down."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, get_type_hints

from .errors import ConfigError


class VersionPolicy(StrEnum):
    """What a worker does with a run recorded under another version of its agent's code."""

    CONTINUE = "continue"  # replay; any step that differs raises NonDeterminismError
    FAIL = "fail"  # fail the run at once, naming both versions


@dataclass(frozen=True, slots=True)
class Settings:
    """Corral's settings. Each field `x` is read from `CORRAL_X` by `Settings.from_env`."""

    database_url: str = "sqlite:///./corral.db"
    lease_seconds: float = 15.0
    concurrency: int = 10
    poll_interval: float = 0.05  # first idle poll; doubles while idle up to poll_max
    poll_max: float = 1.0
    reclaim_local_orphans: bool = True  # take over dead local workers' runs without waiting for leases
    drain_grace: float = 10.0  # seconds in-flight steps get to finish on SIGTERM
    park_threshold: float = 1.0  # sleeps at least this long release the worker slot
    on_version_change: VersionPolicy = VersionPolicy.CONTINUE
    sqlite_synchronous: str = "NORMAL"  # NORMAL survives process crashes; FULL also power loss
    max_input_bytes: int = 1_048_576
    max_step_result_bytes: int = 1_048_576
    max_journal_bytes: int = 64 * 1_048_576
    max_events_per_run: int = 100_000
    event_flush_seconds: float = 0.1  # a step in flight writes its events this often; 0: only with its result
    redis_url: str | None = None  # also relay every event through Redis at once (live streams in a fleet)
    journal_retention_seconds: float = 7 * 86_400  # journals and events of finished runs; messages stay
    prune_interval: float = 600.0  # how often a worker prunes; 0 turns pruning off
    tenant: str = "default"
    config: str | None = None  # a TOML file of model routes ([models.NAME] tables)
    # the HTTP API (corral serve)
    max_queued_per_tenant: int = 1_000  # a tenant's queued + running runs; over it a new run answers 429
    max_queued_total: int = 10_000  # queued runs of all tenants; over it a new run answers 429
    max_body_bytes: int = 2 * 1_048_576  # a request body over it answers 413
    sse_heartbeat_seconds: float = 15.0  # a comment line at least this often on every event stream

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Settings from `CORRAL_*` variables; explicit overrides win over the environment."""
        values: dict[str, Any] = {}
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            raw = environ.get(f"CORRAL_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, hints[f.name], raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0:
            raise ConfigError(f"lease_seconds must be positive, got {self.lease_seconds}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.sqlite_synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ConfigError(f"sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA, got {self.sqlite_synchronous!r}")
        for name in ("max_queued_per_tenant", "max_queued_total", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.event_flush_seconds < 0:
            raise ConfigError(f"event_flush_seconds must be 0 or more, got {self.event_flush_seconds}")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"redis_url must be a redis://, rediss:// or unix:// URL, got {self.redis_url!r}")
        if self.sse_heartbeat_seconds <= 0:
            raise ConfigError(f"sse_heartbeat_seconds must be positive, got {self.sse_heartbeat_seconds}")
        object.__setattr__(self, "on_version_change", VersionPolicy(self.on_version_change))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _parse(name: str, kind: Any, raw: str) -> Any:
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is bool:
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(kind, type) and issubclass(kind, StrEnum):
            return kind(raw.strip().lower())
        return raw
    except ValueError as exc:
        raise ConfigError(f"CORRAL_{name.upper()}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc
