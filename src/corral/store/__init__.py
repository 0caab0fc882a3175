"""Stores: pick the backend by URL."""

from __future__ import annotations

from ..config import Settings
from ..errors import ConfigError
from .base import Claim, Event, Fence, NewRun, RunRecord, RunStatus, StepKind, StepRecord, StepStatus, Store


def open_store(settings: Settings) -> Store:
    """The Store for `settings.database_url` (not yet opened)."""
    url = settings.database_url
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url, synchronous=settings.sqlite_synchronous)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - depends on installed extras
            raise ConfigError(f"PostgreSQL needs psycopg: {exc}") from exc
        # With Redis carrying every event at once, NOTIFYs of flushed events would only repeat it.
        return PostgresStore(url, announce_events=settings.redis_url is None)
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://...")


__all__ = [
    "Claim",
    "Event",
    "Fence",
    "NewRun",
    "RunRecord",
    "RunStatus",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "Store",
    "open_store",
]
