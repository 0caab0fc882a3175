"""The boundary where foreign errors become Corral's: every httpx exception class is mapped, HTTP
statuses map to the right subclass with their data, and keys never leak into messages."""

from __future__ import annotations

import inspect
import time
from email.utils import formatdate

import httpx
import pytest

from corral.errors import (
    AuthenticationFailed,
    BadRequest,
    CircuitOpen,
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
)
from corral.models._http import error_for_status, httpx_error_table, map_httpx_error, parse_retry_after, redact

KEY = "sk-test-SECRET-0123456789abcdef"


def _httpx_exception_classes() -> list[type[Exception]]:
    return [
        obj
        for _, obj in inspect.getmembers(httpx)
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__.startswith("httpx")
    ]


def _instance(cls: type[Exception]) -> Exception:
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    if issubclass(cls, httpx.HTTPStatusError):
        response = httpx.Response(503, request=request, content=b'{"error": {"message": "down"}}')
        return cls("503", request=request, response=response)
    if issubclass(cls, httpx.RequestError):
        return cls("boom", request=request)
    if cls is httpx.StreamConsumed or cls is httpx.StreamClosed:
        return cls()
    if cls in (httpx.ResponseNotRead, httpx.RequestNotRead):
        return cls()
    if cls is httpx.CookieConflict:
        return cls("two cookies")
    return cls("boom")


def test_every_httpx_exception_class_is_mapped_explicitly() -> None:
    classes = _httpx_exception_classes()
    assert len(classes) > 20  # the walk found httpx's exception module
    table = httpx_error_table("openai", KEY)
    unmapped = [c.__name__ for c in classes if c not in table]
    assert not unmapped, f"httpx exception classes without a mapping: {unmapped}"
    for cls in classes:
        err = map_httpx_error(_instance(cls), "openai", KEY)
        assert isinstance(err, CorralError), cls
        assert not isinstance(err, StreamBroken | CircuitOpen)


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (httpx.ConnectError, ConnectionFailed),
        (httpx.ConnectTimeout, ProviderTimeout),
        (httpx.ReadTimeout, ProviderTimeout),
        (httpx.PoolTimeout, ProviderTimeout),
        (httpx.RemoteProtocolError, ConnectionFailed),
        (httpx.ReadError, ConnectionFailed),
        (httpx.ProxyError, ConnectionFailed),
        (httpx.DecodingError, MalformedResponse),
        (httpx.UnsupportedProtocol, ConfigError),
        (httpx.InvalidURL, ConfigError),
        (httpx.HTTPStatusError, ProviderUnavailable),
    ],
)
def test_transport_errors_map_to_the_right_class(cls: type[Exception], expected: type[Exception]) -> None:
    err = map_httpx_error(_instance(cls), "openai")
    assert type(err) is expected
    if isinstance(err, ProviderError):
        assert err.provider == "openai"
        assert err.retryable


def test_timeouts_say_which_phase() -> None:
    err = map_httpx_error(_instance(httpx.ConnectTimeout), "openai")
    assert isinstance(err, ProviderTimeout) and err.phase == "connect"
    err = map_httpx_error(_instance(httpx.ReadTimeout), "openai")
    assert isinstance(err, ProviderTimeout) and err.phase == "read"


@pytest.mark.parametrize(
    ("status", "body", "expected", "retryable"),
    [
        (400, {"error": {"message": "bad field"}}, BadRequest, False),
        (404, {"error": {"message": "no such model"}}, BadRequest, False),
        (422, {"detail": "unprocessable"}, BadRequest, False),
        (401, {"error": {"message": "no key"}}, AuthenticationFailed, False),
        (403, {"error": {"message": "forbidden"}}, AuthenticationFailed, False),
        (408, "timeout", ProviderTimeout, True),
        (413, "too large", ContextTooLong, False),
        (429, {"error": {"message": "slow down"}}, RateLimited, True),
        (500, "oops", ProviderUnavailable, True),
        (502, "<html>bad gateway</html>", ProviderUnavailable, True),
        (503, {"error": {"message": "overloaded"}}, ProviderUnavailable, True),
        (
            529,
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            ProviderUnavailable,
            True,
        ),
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 8192 tokens",
                    "code": "context_length_exceeded",
                }
            },
            ContextTooLong,
            False,
        ),
        (
            400,
            {"error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens"}},
            ContextTooLong,
            False,
        ),
        (400, {"error": {"message": "the request exceeds the available context size"}}, ContextTooLong, False),
    ],
)
def test_statuses(status: int, body: object, expected: type[ProviderError], retryable: bool) -> None:
    import json

    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    err = error_for_status("openai", status, raw, {})
    assert type(err) is expected
    assert err.status == status
    assert err.retryable is retryable
    assert str(status) in str(err)


def test_retry_after_in_seconds_milliseconds_and_dates() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    when = parse_retry_after({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert when is not None and 25 <= when <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    err = error_for_status("openai", 429, b"{}", {"retry-after": "3"})
    assert isinstance(err, RateLimited) and err.retry_after == 3.0
    err = error_for_status("openai", 503, b"{}", {"retry-after": "2"})
    assert err.retry_after == 2.0


def test_keys_echoed_by_a_provider_are_redacted() -> None:
    body = f'{{"error": {{"message": "Incorrect API key provided: {KEY}. Or sk-abc***wxyz."}}}}'.encode()
    err = error_for_status("openai", 401, body, {}, secret=KEY)
    assert KEY not in str(err)
    assert "sk-abc" not in str(err)
    assert "Incorrect API key provided" in str(err)
    assert redact(f"x {KEY} y", KEY) == "x *** y"
    request = httpx.Request("POST", "http://127.0.0.1:1/")
    err2 = map_httpx_error(httpx.ConnectError(f"failed with {KEY}", request=request), "openai", KEY)
    assert KEY not in str(err2)
