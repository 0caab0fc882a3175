"""Fixtures of the API tests: a real HTTP server on 127.0.0.1 (see api_server)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_server import Server, serve


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    """The API with its in-process worker, on each backend (a fresh database each time)."""
    yield from serve(database_url)


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[Server]:
    yield from serve(f"sqlite:///{tmp_path / 'api.db'}")
