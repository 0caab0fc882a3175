"""What the HTTP providers share: an httpx client with an explicit lifecycle, the one boundary
where httpx's exceptions become Corral's, status-code mapping, SSE parsing and key redaction."""

from __future__ import annotations

import abc
import contextlib
import email.utils
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import (
    AuthenticationFailed,
    BadRequest,
    ConfigError,
    ConnectionFailed,
    ContextTooLong,
    CorralError,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    StreamBroken,
    UserError,
)
from .base import ChatModel, ChatRequest, ChatResponse, Delta

# Phrases providers use for "the prompt does not fit" (OpenAI, vLLM, llama.cpp, Ollama, Anthropic).
_CONTEXT_PHRASES = re.compile(
    r"context[_ ]length|context window|maximum context|prompt is too long|too many tokens|"
    r"exceeds? the (?:available )?context|exceed_context_size|input is too long|reduce the length",
    re.IGNORECASE,
)
# Key-shaped strings a provider may echo back in an error message ("Incorrect API key: sk-ab***yz").
_KEYLIKE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*.]{6,}")
_MAX_ERROR_TEXT = 500


def redact(text: str, secret: str | None) -> str:
    """Text with the secret and anything key-shaped replaced by ``***``."""
    if secret:
        text = text.replace(secret, "***")
    return _KEYLIKE.sub("***", text)


def parse_retry_after(headers: httpx.Headers | Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(body: bytes | str) -> str:
    """The human part of an error body: ``error.message`` of a JSON body, else the text."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:_MAX_ERROR_TEXT]
    if isinstance(data, Mapping):
        err = data.get("error", data)
        if isinstance(err, Mapping):
            msg = err.get("message") or err.get("detail") or err.get("type") or err.get("code")
            if msg:
                return str(msg)[:_MAX_ERROR_TEXT]
        elif isinstance(err, str):
            return err[:_MAX_ERROR_TEXT]
        if isinstance(data.get("detail"), str):
            return data["detail"][:_MAX_ERROR_TEXT]
    return text.strip()[:_MAX_ERROR_TEXT]


def error_for_status(
    provider: str,
    status: int,
    body: bytes | str,
    headers: httpx.Headers | Mapping[str, str],
    *,
    secret: str | None = None,
) -> ProviderError:
    """The Corral error for an HTTP error answer (status >= 400)."""
    detail = redact(_error_text(body), secret)
    message = f"{provider} answered {status}: {detail}" if detail else f"{provider} answered {status}"
    retry_after = parse_retry_after(headers)
    if status == 429:
        return RateLimited(message, provider=provider, status=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthenticationFailed(message, provider=provider, status=status)
    if status == 408:
        return ProviderTimeout(message, provider=provider, status=status)
    if status == 413 or (400 <= status < 500 and _CONTEXT_PHRASES.search(detail)):
        return ContextTooLong(message, provider=provider, status=status)
    if status == 409:  # conflicts (e.g. a model being loaded) clear up by themselves
        return ProviderUnavailable(message, provider=provider, status=status, retry_after=retry_after)
    if 400 <= status < 500:
        return BadRequest(message, provider=provider, status=status)
    return ProviderUnavailable(message, provider=provider, status=status, retry_after=retry_after)


def _timeout(provider: str, phase: str) -> Callable[[Exception], CorralError]:
    return lambda exc: ProviderTimeout(
        f"{provider}: {phase} timed out ({exc or type(exc).__name__})", provider=provider, phase=phase
    )


def _connection(provider: str) -> Callable[[Exception], CorralError]:
    return lambda exc: ConnectionFailed(
        f"{provider}: connection failed: {exc or type(exc).__name__}", provider=provider
    )


def _config(provider: str) -> Callable[[Exception], CorralError]:
    return lambda exc: ConfigError(f"{provider}: the endpoint is misconfigured: {exc}")


def _malformed(provider: str) -> Callable[[Exception], CorralError]:
    return lambda exc: MalformedResponse(f"{provider}: undecodable response: {exc}", provider=provider)


def _status(provider: str, secret: str | None) -> Callable[[Exception], CorralError]:
    def make(exc: Exception) -> CorralError:
        assert isinstance(exc, httpx.HTTPStatusError)
        r = exc.response
        try:
            body = r.content
        except httpx.ResponseNotRead:
            body = b""
        return error_for_status(provider, r.status_code, body, r.headers, secret=secret)

    return make


def _bug(provider: str) -> Callable[[Exception], CorralError]:
    # Misuse of httpx's streaming API is a defect in Corral, never the provider's fault.
    return lambda exc: ProviderError(f"{provider}: internal client error: {exc!r}", provider=provider, retryable=False)


def httpx_error_table(provider: str, secret: str | None) -> dict[type[Exception], Callable[[Exception], CorralError]]:
    """Every exception class httpx raises, each mapped explicitly (a test holds this complete)."""
    return {
        httpx.ConnectTimeout: _timeout(provider, "connect"),
        httpx.ReadTimeout: _timeout(provider, "read"),
        httpx.WriteTimeout: _timeout(provider, "write"),
        httpx.PoolTimeout: _timeout(provider, "connection pool"),
        httpx.TimeoutException: _timeout(provider, "request"),
        httpx.ConnectError: _connection(provider),
        httpx.ReadError: _connection(provider),
        httpx.WriteError: _connection(provider),
        httpx.CloseError: _connection(provider),
        httpx.NetworkError: _connection(provider),
        httpx.RemoteProtocolError: _connection(provider),
        httpx.LocalProtocolError: _bug(provider),
        httpx.ProtocolError: _connection(provider),
        httpx.ProxyError: _connection(provider),
        httpx.TransportError: _connection(provider),
        httpx.UnsupportedProtocol: _config(provider),
        httpx.InvalidURL: _config(provider),
        httpx.DecodingError: _malformed(provider),
        httpx.TooManyRedirects: lambda exc: BadRequest(f"{provider}: {exc}", provider=provider, status=None),
        httpx.RequestError: _connection(provider),
        httpx.HTTPStatusError: _status(provider, secret),
        httpx.HTTPError: _connection(provider),
        httpx.CookieConflict: _bug(provider),
        httpx.StreamConsumed: _bug(provider),
        httpx.StreamClosed: _bug(provider),
        httpx.ResponseNotRead: _bug(provider),
        httpx.RequestNotRead: _bug(provider),
        httpx.StreamError: _bug(provider),
    }


def map_httpx_error(exc: Exception, provider: str, secret: str | None = None) -> CorralError:
    """The Corral error for an exception raised by httpx (by the nearest mapped class)."""
    table = httpx_error_table(provider, secret)
    for cls in type(exc).__mro__:
        make = table.get(cls)
        if make is not None:
            err = make(exc)
            if secret:
                err.args = tuple(redact(a, secret) if isinstance(a, str) else a for a in err.args)
            return err
    raise TypeError(f"not an httpx exception: {type(exc).__name__}")


# Exceptions the boundary translates: everything httpx raises (bodies are decoded by loads_json).
_FOREIGN: tuple[type[Exception], ...] = (httpx.HTTPError, httpx.InvalidURL, httpx.CookieConflict, httpx.StreamError)


@dataclass(frozen=True, slots=True)
class SSEvent:
    event: str
    data: str


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEvent]:
    """Server-sent events from a response's lines: ``event:`` and (multi-line) ``data:`` fields;
    comments and ``id:``/``retry:`` are skipped; a blank line ends an event."""
    event, data = "", []
    async for line in lines:
        if not line:
            if data:
                yield SSEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    if data:
        yield SSEvent(event or "message", "\n".join(data))


def loads_json(text: str | bytes, provider: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        snippet = (text.decode("utf-8", "replace") if isinstance(text, bytes) else text)[:120]
        raise MalformedResponse(f"{provider}: {what} is not JSON: {snippet!r}", provider=provider) from exc


class HttpChatModel(ChatModel):
    """A ChatModel over HTTP: owns one httpx client (opened on first use, closed by ``aclose``;
    a closed model refuses calls) and translates every httpx exception in ``stream`` alone."""

    provider: str = "http"

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        name: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float | None = 300.0,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.name = name or f"{self.provider}:{model}"
        self.params = dict(params or {})
        self._api_key = api_key or None
        self._headers = dict(headers or {})
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"<{type(self).__name__} {self.name} base_url={self.base_url} api_key={key}>"

    def _auth_headers(self) -> dict[str, str]:
        """Headers carrying the key; built per request so the key lives in one attribute."""
        return {}

    def client(self) -> httpx.AsyncClient:
        if self._closed:
            raise UserError(f"model {self.name} was closed")
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout, transport=self._transport, headers=self._headers, follow_redirects=False
            )
        return self._client

    async def aclose(self) -> None:
        self._closed = True
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta | ChatResponse]:
        chunks = 0
        try:
            async with contextlib.aclosing(self._stream(request)) as items:
                async for item in items:
                    if isinstance(item, Delta) and item.text:
                        chunks += 1
                    yield item
        except ProviderError as exc:
            if chunks and not isinstance(exc, StreamBroken):
                raise StreamBroken(
                    f"{self.name}: stream failed after {chunks} chunks: {exc}",
                    provider=self.provider,
                    chunks=chunks,
                    status=exc.status,
                ) from exc
            raise
        except _FOREIGN as exc:
            err = map_httpx_error(exc, self.provider, self._api_key)
            if chunks and isinstance(err, ProviderError):
                raise StreamBroken(
                    f"{self.name}: stream broke after {chunks} chunks: {err}", provider=self.provider, chunks=chunks
                ) from exc
            raise err from exc

    @abc.abstractmethod
    def _stream(self, request: ChatRequest) -> AsyncIterator[Delta | ChatResponse]:
        """The provider's wire protocol; may raise httpx errors, which ``stream`` translates."""

    async def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            body = await response.aread()
            raise error_for_status(self.provider, response.status_code, body, response.headers, secret=self._api_key)

    async def _post_json(self, url: str, body: Mapping[str, Any]) -> Any:
        """A non-streaming call: POST the body, map an error status, parse the JSON answer."""
        response = await self.client().post(url, json=body, headers=self._auth_headers())
        await self._raise_for_status(response)
        return loads_json(response.content, self.provider, "the response")
