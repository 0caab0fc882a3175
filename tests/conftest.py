"""Shared fixtures. Integration and chaos tests run on every backend in BACKENDS.

PostgreSQL tests read CORRAL_TEST_POSTGRES_URL and run each test in a schema of its own, dropped
afterwards; Redis tests read CORRAL_TEST_REDIS_URL (Corral's keys there name runs, which are
unique, so tests share the database). When CI=true, an unset or unreachable PostgreSQL or Redis
fails the tests instead of skipping them, so CI can never pass without them.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT))  # the example app (`examples`), as `corral serve examples.app:app` imports it

BACKENDS = ["sqlite", "postgres"]

_found: dict[str, dict[str, str]] = {}  # per variable: "url" or "unavailable" (the reason), once per session


def _service_url(variable: str, service: str, extra: str, connect: Callable[[str], None]) -> str:
    """The URL in `variable`, once `connect(url)` worked; otherwise skip (fail on CI)."""
    found = _found.setdefault(variable, {})
    if not found:
        url = os.environ.get(variable, "")
        if not url:
            found["unavailable"] = f"{variable} is not set"
        else:
            try:
                connect(url)
                found["url"] = url
            except ImportError as exc:
                found["unavailable"] = f"{exc.name} is not installed (pip install corral[{extra}])"
            except Exception as exc:
                found["unavailable"] = f"{service} at {variable} is unreachable: {exc}"
    if "url" in found:
        return found["url"]
    reason = found["unavailable"]
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def _connect_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, connect_timeout=3):
        pass


def _connect_redis(url: str) -> None:
    import redis

    with redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3) as client:
        client.ping()


def _postgres_base_url() -> str:
    return _service_url("CORRAL_TEST_POSTGRES_URL", "PostgreSQL", "postgres", _connect_postgres)


@pytest.fixture
def redis_url() -> str:
    """CORRAL_TEST_REDIS_URL, once known to be reachable; otherwise skip (fail on CI)."""
    return _service_url("CORRAL_TEST_REDIS_URL", "Redis", "redis", _connect_redis)


def _isolated_postgres_url() -> Iterator[str]:
    """A URL whose tables live in a fresh schema (the store creates it); dropped afterwards."""
    import psycopg
    from psycopg import sql

    base = _postgres_base_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{base}{'&' if '?' in base else '?'}schema={schema}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'corral.db'}"
    elif request.param == "postgres":
        yield from _isolated_postgres_url()
    else:
        raise AssertionError(f"unknown backend {request.param}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema, for tests of what only the PostgreSQL store does."""
    yield from _isolated_postgres_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'corral.db'}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CORRAL_") and not key.startswith("CORRAL_TEST_"):
            monkeypatch.delenv(key)
