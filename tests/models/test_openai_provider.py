"""The `openai` provider against a fault-injecting OpenAI-compatible server over loopback HTTP."""

from __future__ import annotations

import json
import logging

import pytest
from fake_llm_servers import Cut, FakeOpenAI, Garbage, Hang, Reply, Status, Truncated, closed_port_url

from corral.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    ContextTooLong,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    StreamBroken,
    UserError,
)
from corral.models import ChatRequest, ChatResponse, Delta, Message, OpenAIModel, ToolCall, ToolSpec

KEY = "sk-test-SECRET-0123456789abcdef"
WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def model(server: FakeOpenAI, **kwargs: object) -> OpenAIModel:
    return OpenAIModel("fake-model", base_url=f"{server.url}/v1", api_key=KEY, **kwargs)  # type: ignore[arg-type]


async def collect(m: OpenAIModel, request: ChatRequest) -> tuple[list[str], ChatResponse]:
    deltas, final = [], None
    async for item in m.stream(request):
        if isinstance(item, Delta):
            deltas.append(item.text)
        else:
            assert final is None, "exactly one ChatResponse"
            final = item
    assert final is not None
    return deltas, final


def ask(text: str = "hi", **kwargs: object) -> ChatRequest:
    return ChatRequest((Message.system("be brief"), Message.user(text)), **kwargs)  # type: ignore[arg-type]


async def test_streams_text_with_usage_and_finish_reason(openai_server: FakeOpenAI) -> None:
    m = model(openai_server)
    openai_server.queue(Reply("The sky is blue", usage=(21, 4)))
    deltas, final = await collect(m, ask(params={"temperature": 0.2}))
    await m.aclose()
    assert deltas == ["The ", "sky ", "is ", "blue"]
    assert final.text == "The sky is blue"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (21, 4)
    assert final.finish_reason == "stop"
    assert final.model == "fake-model"
    req = openai_server.requests[0]
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    body = req.json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert body["temperature"] == 0.2


async def test_non_streaming(openai_server: FakeOpenAI) -> None:
    m = model(openai_server, stream=False)
    openai_server.queue(Reply("whole answer", usage=(5, 2), finish="length"))
    deltas, final = await collect(m, ask())
    await m.aclose()
    assert deltas == ["whole answer"]
    assert final.text == "whole answer" and final.finish_reason == "length"
    assert final.usage.total_tokens == 7
    body = openai_server.requests[0].json
    assert body["stream"] is False and "stream_options" not in body


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_calls_and_fragmented_arguments(openai_server: FakeOpenAI, stream: bool) -> None:
    m = model(openai_server, stream=stream)
    openai_server.queue(
        Reply("", tool_calls=[("get_weather", {"city": "Paris", "unit": "C"}), ("get_weather", {"city": "Oslo"})])
    )
    history = (
        Message.user("weather?"),
        Message.assistant("", (ToolCall("call_a", "get_weather", {"city": "Rome"}),)),
        Message.tool("call_a", "sunny", "get_weather"),
    )
    _, final = await collect(m, ChatRequest(history, tools=(WEATHER,)))
    await m.aclose()
    assert final.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in final.tool_calls] == [
        ("call_0", "get_weather", {"city": "Paris", "unit": "C"}),
        ("call_1", "get_weather", {"city": "Oslo"}),
    ]
    body = openai_server.requests[0].json
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": WEATHER.description, "parameters": WEATHER.parameters},
        }
    ]
    sent = body["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    assert sent[1]["content"] is None
    assert sent[2] == {"role": "tool", "tool_call_id": "call_a", "content": "sunny"}


async def test_structured_output_request_shapes(openai_server: FakeOpenAI) -> None:
    schema = {"title": "Person", "type": "object", "properties": {"name": {"type": "string"}}}
    m = model(openai_server)
    openai_server.queue(Reply('{"name": "Ada"}'))
    _, final = await collect(m, ask(response_format=schema))
    assert json.loads(final.text) == {"name": "Ada"}
    assert openai_server.requests[-1].json["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Person", "schema": schema},
    }
    m2 = model(openai_server, structured_output="json_object")
    await collect(m2, ask(response_format=schema))
    assert openai_server.requests[-1].json["response_format"] == {"type": "json_object", "schema": schema}
    wire = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    await collect(m2, ask(response_format=wire))
    assert openai_server.requests[-1].json["response_format"] == wire
    await m.aclose()
    await m2.aclose()


@pytest.mark.parametrize(
    ("behaviour", "expected", "status"),
    [
        (Status(500), ProviderUnavailable, 500),
        (Status(503, headers={"retry-after": "4"}), ProviderUnavailable, 503),
        (Status(429, headers={"retry-after": "2"}), RateLimited, 429),
        (Status(400, {"error": {"message": "bad"}}), BadRequest, 400),
        (Status(401), AuthenticationFailed, 401),
        (
            Status(400, {"error": {"message": "maximum context length is 2048", "code": "context_length_exceeded"}}),
            ContextTooLong,
            400,
        ),
    ],
)
async def test_http_errors(openai_server: FakeOpenAI, behaviour: Status, expected: type, status: int) -> None:
    for stream in (True, False):
        m = model(openai_server, stream=stream)
        openai_server.queue(behaviour)
        with pytest.raises(expected) as info:
            await collect(m, ask())
        await m.aclose()
        assert info.value.status == status
        assert info.value.provider == "openai"
        if "retry-after" in behaviour.headers:
            assert info.value.retry_after == float(behaviour.headers["retry-after"])


async def test_stream_cut_after_tokens_is_stream_broken(openai_server: FakeOpenAI) -> None:
    m = model(openai_server)
    openai_server.queue(Cut(after=2))
    seen = []
    with pytest.raises(StreamBroken) as info:
        async for item in m.stream(ask()):
            seen.append(item)
    await m.aclose()
    assert [d.text for d in seen] == ["one ", "two "]
    assert info.value.chunks == 2 and not info.value.retryable


async def test_stream_cut_before_any_token_is_a_connection_failure(openai_server: FakeOpenAI) -> None:
    m = model(openai_server)
    openai_server.queue(Cut(after=0))
    with pytest.raises(ConnectionFailed) as info:
        await collect(m, ask())
    assert info.value.retryable
    openai_server.queue(Truncated(after=0))
    with pytest.raises(ConnectionFailed):
        await collect(m, ask())
    openai_server.queue(Truncated(after=2))  # a clean end of body, but no finish and no [DONE]
    with pytest.raises(StreamBroken):
        await collect(m, ask())
    await m.aclose()


async def test_garbage_is_a_malformed_response(openai_server: FakeOpenAI) -> None:
    m = model(openai_server)
    openai_server.queue(Garbage())
    with pytest.raises(MalformedResponse):
        await collect(m, ask())
    openai_server.queue(Reply("", tool_calls=[("get_weather", {"city": "x"})]))
    await collect(m, ask())  # a sane reply still works after
    await m.aclose()


async def test_connection_refused_and_read_timeout(openai_server: FakeOpenAI) -> None:
    m = OpenAIModel("x", base_url=closed_port_url(), api_key=KEY)
    with pytest.raises(ConnectionFailed):
        await collect(m, ask())
    await m.aclose()
    m = model(openai_server, read_timeout=0.2)
    openai_server.queue(Hang(after_headers=True))
    with pytest.raises(ProviderTimeout) as info:
        await collect(m, ask())
    assert info.value.phase == "read"
    await m.aclose()


async def test_a_closed_model_refuses(openai_server: FakeOpenAI) -> None:
    m = model(openai_server)
    await collect(m, ask())
    await m.aclose()
    with pytest.raises(UserError):
        await collect(m, ask())


async def test_the_key_never_shows(openai_server: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    m = model(openai_server)
    assert KEY not in repr(m) and "api_key=set" in repr(m)
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
    openai_server.queue(Status(401, echo), Status(500, echo))
    for _ in range(2):
        with pytest.raises(Exception) as info:
            await collect(m, ask())
        assert KEY not in str(info.value) and KEY not in repr(info.value)
    _, final = await collect(m, ask())
    assert KEY not in json.dumps(final.to_dict())
    await m.aclose()
    assert KEY not in caplog.text
