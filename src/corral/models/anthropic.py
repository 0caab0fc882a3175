"""The `anthropic` provider: the Messages API wire format (system prompt apart, tool_use and
tool_result blocks, the message_start … message_stop event stream) over httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, ConnectionFailed, MalformedResponse
from ._http import HttpChatModel, error_for_status, iter_sse, loads_json
from .base import ChatRequest, ChatResponse, Delta, Message, Role, ToolCall, Usage

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
STRUCTURED_TOOL = "structured_output"  # the forced tool that carries a response_format answer
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
# Error types of the Messages API, as the HTTP status they come with.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicModel(HttpChatModel):
    """A model behind the Anthropic Messages API (``POST /v1/messages``).

    ``max_tokens`` is required by the API: it comes from the request's params, the model's
    params, or ``default_max_tokens``. A ``response_format`` schema is answered through a forced
    tool (``structured_output``) whose input becomes the response text as JSON.
    """

    provider = "anthropic"

    def __init__(
        self,
        model: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        stream: bool = True,
        default_max_tokens: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, base_url=base_url, api_key=api_key, **kwargs)
        self.streaming = stream
        self.default_max_tokens = default_max_tokens

    def _auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of a Messages API request."""
        system = "\n\n".join(m.content for m in request.messages if m.role is Role.SYSTEM and m.content)
        body: dict[str, Any] = {"model": self.model, "messages": _messages(request.messages)}
        if system:
            body["system"] = system
        tools = [{"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools]
        if request.response_format is not None:
            if any(t.name == STRUCTURED_TOOL for t in request.tools):
                raise ConfigError(f"a tool may not be named {STRUCTURED_TOOL!r} with response_format on anthropic")
            schema = request.response_format
            if schema.get("type") == "json_schema":
                schema = schema.get("json_schema", {}).get("schema", {})
            tools.append(
                {"name": STRUCTURED_TOOL, "description": "Give the final answer in this shape.", "input_schema": schema}
            )
            body["tool_choice"] = {"type": "any"} if request.tools else {"type": "tool", "name": STRUCTURED_TOOL}
        if tools:
            body["tools"] = tools
        body.update(self.params)
        body.update(request.params)
        body.setdefault("max_tokens", self.default_max_tokens)
        body["stream"] = self.streaming
        return body

    async def _stream(self, request: ChatRequest) -> AsyncIterator[Delta | ChatResponse]:
        body = self.body(request)
        url = f"{self.base_url}/v1/messages"
        client = self.client()
        if not self.streaming:
            data = await self._post_json(url, body)
            acc = _Message(self.provider, self._api_key)
            acc.whole(data)
            final = acc.response(self.model)
            if final.text:
                yield Delta(final.text)
            yield final
            return
        headers = {**self._auth_headers(), "Accept": "text/event-stream"}
        async with client.stream("POST", url, json=body, headers=headers) as response:
            await self._raise_for_status(response)
            acc = _Message(self.provider, self._api_key)
            async for event in iter_sse(response.aiter_lines()):
                if acc.stopped:
                    continue  # drain the body so the connection is reused (see openai.py)
                text = acc.event(event.event, loads_json(event.data, self.provider, f"a {event.event} event"))
                if text:
                    yield Delta(text)
        final = acc.response(self.model)
        if acc.structured is not None and final.text:
            yield Delta(final.text)  # a structured answer arrives whole, as the forced tool's input
        yield final


@dataclass
class _Message:
    """Builds the assistant message from stream events (or a whole response)."""

    provider: str
    secret: str | None
    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None
    model: str | None = None
    stopped: bool = False
    structured: dict[str, Any] | None = None

    def event(self, kind: str, data: Any) -> str:
        if not isinstance(data, Mapping):
            raise MalformedResponse(f"{self.provider}: a {kind} event is not an object", provider=self.provider)
        kind = data.get("type", kind)
        if kind == "error":
            err = data.get("error") or {}
            status = _ERROR_STATUS.get(err.get("type", ""), 500)
            raise error_for_status(self.provider, status, json.dumps(data), {}, secret=self.secret)
        if kind == "message_start":
            msg = data.get("message") or {}
            self.model = msg.get("model") or self.model
            self._usage(msg.get("usage"))
        elif kind == "content_block_start":
            block = dict(data.get("content_block") or {})
            if block.get("type") == "tool_use":
                block["partial_json"] = ""
            self.blocks[int(data.get("index", len(self.blocks)))] = block
        elif kind == "content_block_delta":
            block = self.blocks.setdefault(int(data.get("index", 0)), {"type": "text", "text": ""})
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
                return delta.get("text", "")
            if delta.get("type") == "input_json_delta":
                block["partial_json"] = block.get("partial_json", "") + delta.get("partial_json", "")
        elif kind == "message_delta":
            self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
            self._usage(data.get("usage"))
        elif kind == "message_stop":
            self.stopped = True
        return ""  # ping, content_block_stop, thinking and signature deltas carry no text

    def whole(self, data: Any) -> None:
        if not isinstance(data, Mapping) or not isinstance(data.get("content"), list):
            raise MalformedResponse(f"{self.provider}: unexpected response shape", provider=self.provider)
        self.model = data.get("model")
        self.blocks = dict(enumerate(data["content"]))
        self.stop_reason = data.get("stop_reason")
        self._usage(data.get("usage"))
        self.stopped = True

    def _usage(self, usage: Mapping[str, Any] | None) -> None:
        if not usage:
            return
        # input tokens include what the prompt cache served or stored: all of it was the prompt.
        inputs = sum(
            int(usage.get(k) or 0) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        )
        self.input_tokens = inputs or self.input_tokens
        self.output_tokens = int(usage.get("output_tokens") or 0) or self.output_tokens  # cumulative

    def response(self, model: str) -> ChatResponse:
        if not self.stopped:
            raise ConnectionFailed(f"{self.provider}: the stream ended before message_stop", provider=self.provider)
        text, calls = [], []
        for _, block in sorted(self.blocks.items()):
            if block.get("type") == "text":
                text.append(block.get("text", ""))
            elif block.get("type") == "tool_use":
                args = block.get("input") or {}
                if block.get("partial_json"):
                    args = loads_json(block["partial_json"], self.provider, f"the input of tool {block.get('name')!r}")
                if not isinstance(args, dict):
                    raise MalformedResponse(f"{self.provider}: tool input is not an object", provider=self.provider)
                if block.get("name") == STRUCTURED_TOOL:
                    self.structured = args
                else:
                    calls.append(ToolCall(block.get("id") or f"toolu_{len(calls)}", block.get("name", ""), args))
        body = "".join(text)
        finish = _FINISH.get(self.stop_reason or "end_turn", "stop")
        if self.structured is not None and not calls:
            body, finish = json.dumps(self.structured), "stop"
        return ChatResponse(
            message=Message(Role.ASSISTANT, body, tuple(calls)),
            usage=Usage(self.input_tokens, self.output_tokens),
            finish_reason="tool_calls" if calls else finish,
            model=self.model or model,
        )


def _messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Messages API turns: tool results ride in user turns; consecutive same-role turns merge."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role is Role.SYSTEM:
            continue
        blocks: list[dict[str, Any]] = []
        if m.role is Role.TOOL:
            role = "user"
            blocks.append({"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.content})
        else:
            role = "assistant" if m.role is Role.ASSISTANT else "user"
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            blocks.extend({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in m.tool_calls)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


__all__ = ["DEFAULT_BASE_URL", "AnthropicModel"]
