"""The `anthropic` provider against a loopback server speaking the Messages API wire format.

What the fake covers, as Anthropic documents the API: `POST /v1/messages` with the `x-api-key`
and `anthropic-version` headers; the system prompt as a top-level field; tool definitions with
`input_schema`; assistant `tool_use` blocks and user `tool_result` blocks (consecutive same-role
turns merged); the SSE stream `message_start` (input usage), `content_block_start`,
`content_block_delta` (`text_delta` and fragmented `input_json_delta`), `content_block_stop`,
`message_delta` (stop reason, output usage), `message_stop`, `ping`, and `error` events; the
non-streaming response; error statuses (400 prompt too long, 401, 429 with Retry-After, 529).
Not covered (the real API only): thinking blocks, prompt caching, server-side tools, images.
"""

from __future__ import annotations

import json

import pytest
from fake_llm_servers import AnthropicError, Cut, FakeAnthropic, Garbage, Reply, Status

from corral.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    ContextTooLong,
    MalformedResponse,
    ProviderUnavailable,
    RateLimited,
    StreamBroken,
)
from corral.models import AnthropicModel, ChatRequest, ChatResponse, Delta, Message, ToolCall, ToolSpec

KEY = "sk-ant-test-SECRET-0123456789"
WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def model(server: FakeAnthropic, **kwargs: object) -> AnthropicModel:
    return AnthropicModel("fake-claude", base_url=server.url, api_key=KEY, **kwargs)  # type: ignore[arg-type]


async def collect(m: AnthropicModel, request: ChatRequest) -> tuple[list[str], ChatResponse]:
    deltas, final = [], None
    async for item in m.stream(request):
        if isinstance(item, Delta):
            deltas.append(item.text)
        else:
            assert final is None
            final = item
    assert final is not None
    return deltas, final


def ask(text: str = "hi", **kwargs: object) -> ChatRequest:
    return ChatRequest((Message.system("be brief"), Message.user(text)), **kwargs)  # type: ignore[arg-type]


async def test_streams_text_with_usage(anthropic_server: FakeAnthropic) -> None:
    m = model(anthropic_server)
    anthropic_server.queue(Reply("Hello there friend", usage=(25, 9)))
    deltas, final = await collect(m, ask(params={"temperature": 0.5}))
    await m.aclose()
    assert deltas == ["Hello ", "there ", "friend"]
    assert final.text == "Hello there friend"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (25, 9)
    assert final.finish_reason == "stop" and final.model == "fake-claude"
    req = anthropic_server.requests[0]
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == KEY and req.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req.headers
    body = req.json
    assert body["system"] == "be brief"
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert body["max_tokens"] == 1024 and body["stream"] is True and body["temperature"] == 0.5


async def test_non_streaming(anthropic_server: FakeAnthropic) -> None:
    m = model(anthropic_server, stream=False)
    anthropic_server.queue(Reply("all at once", usage=(3, 4), finish="max_tokens"))
    deltas, final = await collect(m, ask(params={"max_tokens": 5}))
    await m.aclose()
    assert deltas == ["all at once"] and final.finish_reason == "length"
    assert final.usage.total_tokens == 7
    assert anthropic_server.requests[0].json["max_tokens"] == 5


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_use_round_trip(anthropic_server: FakeAnthropic, stream: bool) -> None:
    m = model(anthropic_server, stream=stream)
    anthropic_server.queue(Reply("Let me check.", tool_calls=[("get_weather", {"city": "Paris", "days": 3})]))
    history = (
        Message.system("you are a forecaster"),
        Message.user("weather in Rome and Oslo?"),
        Message.assistant(
            "",
            (
                ToolCall("toolu_a", "get_weather", {"city": "Rome"}),
                ToolCall("toolu_b", "get_weather", {"city": "Oslo"}),
            ),
        ),
        Message.tool("toolu_a", "sunny", "get_weather"),
        Message.tool("toolu_b", "snow", "get_weather"),
    )
    _, final = await collect(m, ChatRequest(history, tools=(WEATHER,)))
    await m.aclose()
    assert final.text == "Let me check."
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls == (ToolCall("toolu_0", "get_weather", {"city": "Paris", "days": 3}),)
    body = anthropic_server.requests[0].json
    assert body["tools"] == [
        {"name": "get_weather", "description": WEATHER.description, "input_schema": WEATHER.parameters}
    ]
    assert body["system"] == "you are a forecaster"
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Rome"}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
    }
    assert body["messages"][2] == {  # two tool results, one user turn
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "snow"},
        ],
    }


async def test_structured_output_through_a_forced_tool(anthropic_server: FakeAnthropic) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    m = model(anthropic_server)
    anthropic_server.queue(Reply("", tool_calls=[("structured_output", {"name": "Ada"})], finish="tool_use"))
    deltas, final = await collect(m, ask(response_format=schema))
    assert json.loads(final.text) == {"name": "Ada"}
    assert deltas == [final.text]
    assert final.tool_calls == () and final.finish_reason == "stop"
    body = anthropic_server.requests[0].json
    assert body["tool_choice"] == {"type": "tool", "name": "structured_output"}
    assert body["tools"][-1]["input_schema"] == schema
    bad = ToolSpec("structured_output", "", {"type": "object"})
    with pytest.raises(ConfigError):
        await collect(m, ask(response_format=schema, tools=(bad,)))
    await m.aclose()


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (
            Status(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ProviderUnavailable,
        ),
        (Status(429, headers={"retry-after": "3"}), RateLimited),
        (
            Status(401, {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}}),
            AuthenticationFailed,
        ),
        (
            Status(
                400,
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "message": "prompt is too long: 300000 tokens > 200000 maximum",
                    },
                },
            ),
            ContextTooLong,
        ),
        (AnthropicError("overloaded_error"), ProviderUnavailable),
        (AnthropicError("rate_limit_error"), RateLimited),
        (AnthropicError("overloaded_error", after=2), StreamBroken),
        (Cut(after=2), StreamBroken),
        (Cut(after=0), ConnectionFailed),
        (Garbage(), MalformedResponse),
    ],
)
async def test_errors(anthropic_server: FakeAnthropic, behaviour: object, expected: type) -> None:
    m = model(anthropic_server)
    anthropic_server.queue(behaviour)  # type: ignore[arg-type]
    with pytest.raises(expected) as info:
        await collect(m, ask())
    await m.aclose()
    assert info.value.provider == "anthropic"
    assert KEY not in str(info.value)
    if isinstance(behaviour, Status) and "retry-after" in behaviour.headers:
        assert info.value.retry_after == 3.0


async def test_key_is_not_in_repr(anthropic_server: FakeAnthropic) -> None:
    m = model(anthropic_server)
    assert KEY not in repr(m)
    await m.aclose()
