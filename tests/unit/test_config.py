"""Settings: defaults, TOML file, SEGSTREAM_ environment, secrets that never print."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segstream.config import load_settings
from segstream.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests set their own SEGSTREAM_ variables; the calling shell's do not count."""
    for name in [n for n in os.environ if n.startswith("SEGSTREAM_")]:
        monkeypatch.delenv(name)


def test_defaults_match_the_design_contract() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (settings.topics.events, settings.topics.segments, settings.topics.dlq,
            settings.topics.catalog) == ("segstream.events", "segstream.segments",
                                         "segstream.events.dlq", "segstream.catalog")
    assert "purchase" in settings.events.allowed_types


def test_toml_file_then_environment_then_overrides(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "segstream.toml"
    config.write_text('[kafka]\nbootstrap_servers = "broker-a:9092"\nclient_id = "from-file"\n'
                      '[redis]\nport = 7000\n[events]\nextra_types = ["download"]\n')
    monkeypatch.setenv("SEGSTREAM_KAFKA__CLIENT_ID", "from-env")
    settings = load_settings(config)
    assert settings.kafka.bootstrap_servers == "broker-a:9092"  # file
    assert settings.kafka.client_id == "from-env"                # env beats file
    assert settings.redis.port == 7000
    assert "download" in settings.events.allowed_types
    monkeypatch.setenv("SEGSTREAM_CONFIG", str(config))
    assert load_settings(log_level="DEBUG").log_level == "DEBUG"  # override; file via env
    assert load_settings().redis.port == 7000


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGSTREAM_REDIS__PASSWORD", "hunter2-redis")
    monkeypatch.setenv("SEGSTREAM_KAFKA__SASL_PASSWORD", "hunter2-kafka")
    settings = load_settings()
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "hunter2" not in shown
    assert settings.redis.password is not None
    assert settings.redis.password.get_secret_value() == "hunter2-redis"


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("SEGSTREAM_REDIS__PORT", "not-a-port", "redis.port"),
        ("SEGSTREAM_KAFKA__SECURITY_PROTOCOL", "CARRIER_PIGEON", "kafka.security_protocol"),
        ("SEGSTREAM_LOG_LEVEL", "LOUD", "log_level"),
    ],
)
def test_bad_values_give_one_line_config_errors(monkeypatch: pytest.MonkeyPatch, env: str,
                                                value: str, fragment: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_or_broken_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    with pytest.raises(ConfigError):
        load_settings(broken)
