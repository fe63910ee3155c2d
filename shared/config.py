"""Settings: defaults < TOML file < environment (``SEGSTREAM_`` prefix) < explicit overrides.

Nested fields use ``__`` in the environment, e.g. ``SEGSTREAM_KAFKA__BOOTSTRAP_SERVERS``.
The TOML file is ``--config FILE`` or ``$SEGSTREAM_CONFIG``; its tables mirror the models
below (``[kafka]``, ``[redis]``, ...). Credentials are ``SecretStr``: they print as
``**********`` in reprs, logs and ``segstream status``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from segstream.errors import ConfigError

DEFAULT_EVENT_TYPES = (
    "view", "click", "cart", "purchase", "like", "share", "comment", "play", "rate",
)


def default_home() -> Path:
    """Where jars, environments and local service state live (outside any clone)."""
    return Path(os.environ.get("SEGSTREAM_HOME", Path.home() / ".cache" / "segstream"))


class KafkaSettings(BaseModel):
    """Kafka client settings shared by every producer, consumer and admin client."""

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "segstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    request_timeout_ms: int = Field(default=30_000, ge=1_000)


class RedisSettings(BaseModel):
    """Redis connection; ``key_prefix`` namespaces every key segstream writes."""

    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    db: int = Field(default=0, ge=0)
    username: str | None = None
    password: SecretStr | None = None
    ssl: bool = False
    ssl_ca_certs: str | None = None
    key_prefix: str = Field(default="ss", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    socket_timeout_s: float = Field(default=10.0, gt=0)


class TopicSettings(BaseModel):
    """Topic names and partition counts (DESIGN §4)."""

    events: str = "segstream.events"
    segments: str = "segstream.segments"
    dlq: str = "segstream.events.dlq"
    catalog: str = "segstream.catalog"
    events_partitions: int = Field(default=6, ge=1)
    segments_partitions: int = Field(default=6, ge=1)


class EventSettings(BaseModel):
    """Input validation rules that operators may extend."""

    types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    extra_types: tuple[str, ...] = ()
    max_record_bytes: int = Field(default=64 * 1024, ge=256)

    @property
    def allowed_types(self) -> frozenset[str]:
        return frozenset(self.types) | frozenset(self.extra_types)


class LocalInfraSettings(BaseModel):
    """The local Kafka broker and Redis server that ``segstream up`` runs on this machine."""

    home: Path = Field(default_factory=default_home)
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    kafka_heap_mb: int = Field(default=512, ge=128)
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_appendonly: bool = True
    start_timeout_s: float = Field(default=90.0, gt=0)
    stop_timeout_s: float = Field(default=30.0, gt=0)

    @property
    def state_dir(self) -> Path:
        """Data, logs and pid files of the local services (a folder per service and port)."""
        return self.home / "local"


class IngestSettings(BaseModel):
    """The ingest service (``segstream run ingest``)."""

    metrics_port: int = Field(default=9401, ge=0, le=65535)


class EncoderSettings(BaseModel):
    """The encoder service (``segstream run encoder``)."""

    metrics_port: int = Field(default=9402, ge=0, le=65535)


class SegmenterSettings(BaseModel):
    """The segmenter service (``segstream run segmenter``)."""

    metrics_port: int = Field(default=9403, ge=0, le=65535)


class Settings(BaseSettings):
    """Everything a segstream process can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="SEGSTREAM_", env_nested_delimiter="__", extra="forbid"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    local: LocalInfraSettings = Field(default_factory=LocalInfraSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    segmenter: SegmenterSettings = Field(default_factory=SegmenterSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build settings from the optional TOML file, the environment and ``overrides``.

    Raises ``ConfigError`` (one line) for a missing file or an invalid value.
    """
    path = config_file or os.environ.get("SEGSTREAM_CONFIG")
    cls = Settings
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        config = {**Settings.model_config, "toml_file": Path(path)}
        cls = type("FileSettings", (Settings,), {"model_config": config})
    try:
        return cls(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read settings: {exc}") from None
