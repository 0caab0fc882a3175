"""The README's examples are a contract with its readers: they must keep working."""

import re
import tomllib
from pathlib import Path

from corral.config import Settings
from corral.models import Router, models_from_config

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_model_routes_example_loads():
    block = re.search(r"```toml\n(.*?)```", README, re.S).group(1)
    models = models_from_config(tomllib.loads(block), {"OPENAI_API_KEY": "k1", "ANTHROPIC_API_KEY": "k2"})
    assert isinstance(models["default"], Router)


def test_every_setting_is_in_the_configuration_table():
    import dataclasses

    for field in dataclasses.fields(Settings):
        assert f"`CORRAL_{field.name.upper()}`" in README, field.name
