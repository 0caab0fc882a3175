"""Identifiers: time-ordered UUIDs (the version 7 layout) for the rows Corral creates.

Runs created together get neighbouring ids, so their journal and event rows, keyed by run id,
land on neighbouring index pages: a commit of many concurrent runs dirties a few pages instead of
one page per run (measured: WAL pages per commit 234 → 93 and +30–54% steps/s on SQLite).
"""

from __future__ import annotations

import os
import time
import uuid


def new_id() -> str:
    """A UUID string whose first 48 bits are the Unix time in milliseconds (RFC 9562 version 7)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))
