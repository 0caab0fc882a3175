"""Shared fixtures. Integration and chaos tests run on every backend in BACKENDS.

PostgreSQL tests read CORRAL_TEST_POSTGRES_URL. When CI=true, an unreachable PostgreSQL fails
the tests instead of skipping them, so CI can never pass without it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'corral.db'}"
    raise AssertionError(f"unknown backend {request.param}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'corral.db'}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CORRAL_") and not key.startswith("CORRAL_TEST_"):
            monkeypatch.delenv(key)
