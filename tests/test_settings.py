"""Settings come from ATTIMO_* variables and flags, in one object."""

import os
import subprocess
import sys

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


@pytest.mark.parametrize(("env", "fragment"), [
    ({"ATTIMO_QUIET_HOURS": "21"}, "ATTIMO_QUIET_HOURS"),
    ({"ATTIMO_QUIET_HOURS": "21-25"}, "ATTIMO_QUIET_HOURS"),
    ({"ATTIMO_QUIET_HOURS": "8-8"}, "ATTIMO_QUIET_HOURS"),
    ({"ATTIMO_KAFKA_IDEMPOTENT": "ture"}, "ATTIMO_KAFKA_IDEMPOTENT"),
    ({"ATTIMO_CONTACT_CAPS": "email:one/3"}, "ATTIMO_CONTACT_CAPS"),
    ({"ATTIMO_CONTACT_CAPS": "email"}, "ATTIMO_CONTACT_CAPS"),
    ({"ATTIMO_WEBHOOK_URLS": "push=push.example/send"}, "ATTIMO_WEBHOOK_URLS"),
    ({"ATTIMO_WEBHOOK_URLS": "https://push.example/send"}, "ATTIMO_WEBHOOK_URLS"),
    ({"ATTIMO_SCHEDULER_POLL_MS": "0"}, "ATTIMO_SCHEDULER_POLL_MS"),
    ({"ATTIMO_SMTP_TLS": "ssl"}, "ATTIMO_SMTP_TLS"),
    ({"ATTIMO_PUBLIC_URL": "shop.example"}, "ATTIMO_PUBLIC_URL"),
])
def test_compound_values_are_checked_when_the_settings_load(env, fragment):
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env(env)


def test_compound_values_are_typed_and_survive_the_round_trip():
    settings = Settings.from_env({
        "ATTIMO_QUIET_HOURS": "21-8", "ATTIMO_CONTACT_CAPS": "email:1/3,total:/10",
        "ATTIMO_WEBHOOK_URLS": "push=https://push.example/send", "ATTIMO_KAFKA_IDEMPOTENT": "off",
    })
    assert settings.quiet_hours == (21, 8)
    assert settings.contact_caps == (("email", 1, 3), ("total", None, 10))
    assert settings.webhook_urls == (("push", "https://push.example/send"),)
    assert settings.kafka_idempotent is False
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize("command", ["serve", "worker", "scheduler"])
def test_a_bad_value_stops_each_process_at_start_naming_the_variable(command):
    env = {**os.environ, "ATTIMO_QUIET_HOURS": "21", "ATTIMO_KAFKA_BROKERS": "127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "engine.cli", command], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "ATTIMO_QUIET_HOURS" in done.stderr and "START-END" in done.stderr
