"""Settings come from ATTIMO_* variables and flags, in one object."""

import pytest

from engine.errors import SettingsError
from engine.settings import Settings


def test_environment_variables_and_flags_build_one_settings_object():
    settings = Settings.from_env({
        "ATTIMO_REDIS_URL": "redis://r:6380/1", "ATTIMO_PORT": "9000",
        "ATTIMO_ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "ATTIMO_SITE_KEY": "k", "ATTIMO_SITE_SECRET": "s", "ATTIMO_REDIS_BUDGET_MS": "25",
    }, port=9100, workers=None)
    assert settings.redis_url == "redis://r:6380/1"
    assert settings.port == 9100  # the flag wins
    assert settings.workers == 1
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.redis_budget_ms == 25.0


def test_settings_round_trip_through_the_environment_for_worker_processes():
    settings = Settings.from_env({"ATTIMO_SERVER_TOKEN": "t", "ATTIMO_ALLOWED_ORIGINS": "https://a"})
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(("env", "fragment"), [
    ({"ATTIMO_PORT": "eighty"}, "ATTIMO_PORT"),
    ({"ATTIMO_WORKERS": "0"}, "ATTIMO_WORKERS"),
    ({"ATTIMO_SITE_KEY": "k"}, "ATTIMO_SITE_SECRET"),
])
def test_bad_settings_name_the_variable(env, fragment):
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env(env)
