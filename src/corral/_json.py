"""JSON at the durable boundary: compact encoding, size checks and stable hashes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .errors import NotSerializable

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_sorted_encoder = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False, default=repr
)


def dumps(value: Any, *, what: str = "value") -> str:
    """Encode `value` as compact JSON, or raise NotSerializable naming `what`."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise NotSerializable(f"{what} is not JSON-serializable: {exc}") from exc


loads = json.loads


def stable_hash(*parts: Any) -> str:
    """A short hash of `parts` that does not depend on dict order; unknown objects hash by repr."""
    text = _sorted_encoder.encode(parts)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
