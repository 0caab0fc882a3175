"""SQL lives here, one file of named queries per backend plus numbered migrations."""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def load_queries(backend: str) -> dict[str, str]:
    """Parse `<backend>.sql` into {name: statement}; each block starts with `-- name: x`."""
    text = resources.files(__package__).joinpath(f"{backend}.sql").read_text()
    parts = _NAME.split(text)
    return {name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def load_migrations(backend: str) -> list[tuple[int, str, str]]:
    """The numbered migrations of a backend as (version, name, sql), in order."""
    folder = resources.files(__package__).joinpath(backend)
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)
