import pytest

from corral.config import Settings, VersionPolicy
from corral.errors import ConfigError


def test_defaults():
    s = Settings.from_env({})
    assert s.database_url == "sqlite:///./corral.db"
    assert s.lease_seconds == 15.0
    assert s.on_version_change is VersionPolicy.CONTINUE


def test_environment_is_parsed_by_type_and_overrides_win():
    env = {
        "CORRAL_LEASE_SECONDS": "2.5",
        "CORRAL_CONCURRENCY": "7",
        "CORRAL_ON_VERSION_CHANGE": "FAIL",
        "CORRAL_DATABASE_URL": "sqlite:///x.db",
    }
    s = Settings.from_env(env, database_url="sqlite:///y.db")
    assert s.lease_seconds == 2.5 and s.concurrency == 7
    assert s.on_version_change is VersionPolicy.FAIL
    assert s.database_url == "sqlite:///y.db"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CORRAL_LEASE_SECONDS": "soon"}, "CORRAL_LEASE_SECONDS"),
        ({"CORRAL_CONCURRENCY": "0"}, "concurrency"),
        ({"CORRAL_ON_VERSION_CHANGE": "maybe"}, "ON_VERSION_CHANGE"),
        ({"CORRAL_SQLITE_SYNCHRONOUS": "fast"}, "synchronous"),
    ],
)
def test_bad_values_are_named(env, needle):
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(AttributeError):
        s.lease_seconds = 1  # type: ignore[misc]
