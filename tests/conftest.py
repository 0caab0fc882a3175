"""Shared fixtures. Integration and chaos tests run on every backend in BACKENDS.

PostgreSQL tests read CORRAL_TEST_POSTGRES_URL and run each test in a schema of its own, dropped
afterwards. When CI=true, an unset or unreachable PostgreSQL fails the tests instead of skipping
them, so CI can never pass without it.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

BACKENDS = ["sqlite", "postgres"]

_postgres: dict[str, str] = {}  # "url" or "unavailable" (the reason), found once per session


def _postgres_base_url() -> str:
    """CORRAL_TEST_POSTGRES_URL, once known to be reachable; otherwise skip (fail on CI)."""
    if not _postgres:
        url = os.environ.get("CORRAL_TEST_POSTGRES_URL", "")
        if not url:
            _postgres["unavailable"] = "CORRAL_TEST_POSTGRES_URL is not set"
        else:
            try:
                import psycopg

                with psycopg.connect(url, connect_timeout=3):
                    pass
                _postgres["url"] = url
            except ImportError:
                _postgres["unavailable"] = "psycopg is not installed (pip install corral[postgres])"
            except Exception as exc:
                _postgres["unavailable"] = f"PostgreSQL at CORRAL_TEST_POSTGRES_URL is unreachable: {exc}"
    if "url" in _postgres:
        return _postgres["url"]
    reason = _postgres["unavailable"]
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


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
