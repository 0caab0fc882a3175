"""The `openai` provider: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
the llama.cpp servers), streaming over SSE or not, with tool calls, usage and structured output."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, ConnectionFailed, MalformedResponse
from ._http import HttpChatModel, error_for_status, iter_sse, loads_json
from .base import ChatRequest, ChatResponse, Delta, Message, Role, ToolCall, Usage, approx_tokens

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_FINISH = {
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "length": "length",
    "content_filter": "content_filter",
}


class OpenAIModel(HttpChatModel):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``stream=False`` makes one plain request and yields its whole text as one delta.
    ``structured_output`` picks how ``ChatRequest.response_format`` (a JSON schema) is sent:
    ``"json_schema"`` (OpenAI, vLLM, llama.cpp's server, Ollama) or ``"json_object"``
    (``{"type": "json_object", "schema": ...}``, as llama-cpp-python's server wants it).
    The provider's own retries do not exist here: the router owns retry policy.
    """

    provider = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        stream: bool = True,
        structured_output: str = "json_schema",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, base_url=base_url, api_key=api_key, **kwargs)
        if structured_output not in ("json_schema", "json_object"):
            raise ConfigError(f"structured_output must be 'json_schema' or 'json_object', got {structured_output!r}")
        self.streaming = stream
        self.structured_output = structured_output

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of a chat-completions request."""
        body: dict[str, Any] = {"model": self.model, "messages": [_message(m) for m in request.messages]}
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        if request.response_format is not None:
            body["response_format"] = _response_format(request.response_format, self.structured_output)
        body.update(self.params)
        body.update(request.params)
        body["stream"] = self.streaming
        if self.streaming:
            body["stream_options"] = {"include_usage": True}
        return body

    async def _stream(self, request: ChatRequest) -> AsyncIterator[Delta | ChatResponse]:
        body = self.body(request)
        url = f"{self.base_url}/chat/completions"
        client = self.client()
        if not self.streaming:
            data = await self._post_json(url, body)
            final = self._parse_completion(data, request)
            if final.text:
                yield Delta(final.text)
            yield final
            return
        headers = {**self._auth_headers(), "Accept": "text/event-stream"}
        async with client.stream("POST", url, json=body, headers=headers) as response:
            await self._raise_for_status(response)
            acc = _Accumulator(self.provider, self._api_key)
            async for event in iter_sse(response.aiter_lines()):
                # Read to the end of the body even after [DONE]: a response left unread makes the
                # client drop its connection, so every streamed call would pay a new handshake.
                if acc.done:
                    continue
                if event.data.strip() == "[DONE]":
                    acc.done = True
                    continue
                chunk = loads_json(event.data, self.provider, "a stream chunk")
                text = acc.add(chunk)
                if text:
                    yield Delta(text)
        yield acc.response(request, self.model)

    def _parse_completion(self, data: Any, request: ChatRequest) -> ChatResponse:
        if not isinstance(data, Mapping):
            raise MalformedResponse(f"{self.provider}: the response is not an object", provider=self.provider)
        if "error" in data and not data.get("choices"):
            raise error_for_status(self.provider, 500, json.dumps(data), {}, secret=self._api_key)
        try:
            choice = data["choices"][0]
            msg = choice.get("message") or {}
            calls = tuple(
                ToolCall(c.get("id") or f"call_{i}", c["function"]["name"], _arguments(c["function"], self.provider))
                for i, c in enumerate(msg.get("tool_calls") or ())
            )
        except (KeyError, IndexError, TypeError) as exc:
            raise MalformedResponse(
                f"{self.provider}: unexpected response shape: {exc!r}", provider=self.provider
            ) from exc
        text = msg.get("content") or ""
        return ChatResponse(
            message=Message(Role.ASSISTANT, text, calls),
            usage=_usage(data.get("usage"), request, text),
            finish_reason=_finish(choice.get("finish_reason"), calls),
            model=data.get("model") or self.model,
        )


@dataclass
class _Accumulator:
    """Builds the final response from stream chunks; tool-call fragments join by their index."""

    provider: str
    secret: str | None
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Mapping[str, Any] | None = None
    model: str | None = None
    done: bool = False

    def add(self, chunk: Any) -> str:
        if not isinstance(chunk, Mapping):
            raise MalformedResponse(f"{self.provider}: a stream chunk is not an object", provider=self.provider)
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            status = err.get("code") if isinstance(err, Mapping) and isinstance(err.get("code"), int) else 500
            raise error_for_status(self.provider, status, json.dumps(chunk), {}, secret=self.secret)
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(delta["content"])
            for frag in delta.get("tool_calls") or ():
                slot = self.calls.setdefault(
                    frag.get("index", len(self.calls)), {"id": "", "name": "", "arguments": ""}
                )
                slot["id"] = frag.get("id") or slot["id"]
                fn = frag.get("function") or {}
                slot["name"] = fn.get("name") or slot["name"]  # whole in one fragment (some servers repeat it)
                slot["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        text = "".join(out)
        self.text.append(text)
        return text

    def response(self, request: ChatRequest, model: str) -> ChatResponse:
        if not self.done and self.finish_reason is None:
            raise ConnectionFailed(
                f"{self.provider}: the stream ended before the answer was complete", provider=self.provider
            )
        calls = tuple(
            ToolCall(c["id"] or f"call_{i}", c["name"], _arguments(c, self.provider))
            for i, c in sorted(self.calls.items())
        )
        text = "".join(self.text)
        return ChatResponse(
            message=Message(Role.ASSISTANT, text, calls),
            usage=_usage(self.usage, request, text),
            finish_reason=_finish(self.finish_reason, calls),
            model=self.model or model,
        )


def _message(m: Message) -> dict[str, Any]:
    if m.role is Role.TOOL:
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content}
    out: dict[str, Any] = {"role": m.role.value, "content": m.content}
    if m.tool_calls:
        out["content"] = m.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.name is not None and m.role is Role.USER:
        out["name"] = m.name
    return out


def _response_format(schema: dict[str, Any], style: str) -> dict[str, Any]:
    if schema.get("type") in ("json_schema", "json_object", "text"):
        return schema  # already in the wire shape (no JSON schema has these types)
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": str(schema.get("title") or "response"), "schema": schema}}


def _arguments(fn: Mapping[str, Any], provider: str) -> dict[str, Any]:
    raw = fn.get("arguments")
    if isinstance(raw, dict):
        return raw
    if not raw or not str(raw).strip():
        return {}
    value = loads_json(raw, provider, f"the arguments of tool call {fn.get('name')!r}")
    if not isinstance(value, dict):
        raise MalformedResponse(
            f"{provider}: tool call {fn.get('name')!r} arguments are not an object", provider=provider
        )
    return value


def _usage(raw: Mapping[str, Any] | None, request: ChatRequest, text: str) -> Usage:
    if raw:
        return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))
    # Servers that do not report usage (some ignore stream_options): estimate, so token budgets still hold.
    return Usage(sum(approx_tokens(m.content) for m in request.messages), approx_tokens(text))


def _finish(reason: str | None, calls: tuple[ToolCall, ...]) -> str:
    if calls:
        return "tool_calls"
    return _FINISH.get(reason or "stop", "stop")


__all__ = ["DEFAULT_BASE_URL", "OpenAIModel"]
