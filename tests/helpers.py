"""Test helpers shared by unit and integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

KAFKA_BACKENDS = ("kafka-python", "confluent")
# run a test once on each Kafka client backend: its ``kafka_infra`` and ``kafka`` fixtures
# (tests/conftest.py) follow the parameter
both_kafka_clients = pytest.mark.parametrize("kafka_backend", KAFKA_BACKENDS, indirect=True)


def wait_until(check: Callable[[], T], timeout_s: float = 30.0, interval_s: float = 0.05,
               what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def create_event_topics(settings: Any, partitions: int) -> None:
    """Create ``settings.topics.events`` (``partitions``) and its DLQ (1), and wait until
    both show in metadata."""
    from segstream.kafka_client import TopicSpec, kafka_clients

    admin = kafka_clients(settings.kafka).admin()
    try:
        names = [settings.topics.events, settings.topics.dlq]
        admin.create_topics([TopicSpec(settings.topics.events, partitions, {}),
                             TopicSpec(settings.topics.dlq, 1, {})])
        wait_until(lambda: len(admin.describe(names)) == 2, what="topics")
    finally:
        admin.close()


def segmenter_settings(infra: Any, unique: str, kafka: Any, partitions: int = 3,
                       **segmenter: Any) -> Any:
    """``infra`` isolated for a segmenter test: key prefix and the events, dlq, segments,
    catalog and assignments topics named after ``unique`` (created, the segments topic
    with ``partitions``), and a small segmenter (k=3, cold_start_factor=10, metrics off,
    block_ms=50, catalog_refresh_s=3600, refit_every=0) updated with ``segmenter``."""
    from segstream.kafka_io import ensure_topics, topic_specs

    s = infra.model_copy(deep=True)
    s.kafka.client = kafka.name  # the services use the backend of the test's clients
    s.redis.key_prefix = unique
    for name in ("events", "dlq", "segments", "catalog", "assignments"):
        setattr(s.topics, name, f"{unique}.{name}")
    s.topics.segments_partitions = partitions
    s.segmenter = s.segmenter.model_copy(update={
        "k": 3, "cold_start_factor": 10, "metrics_port": 0, "block_ms": 50,
        "catalog_refresh_s": 3600.0, "refit_every": 0, **segmenter})
    admin = kafka.admin()
    ensure_topics(admin, topic_specs(s.topics))
    admin.close()
    return s


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (the Java client's) picks for ``key``:
    32-bit MurmurHash2 with seed 0x9747b28c, sign bit cleared, modulo ``partitions``."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(key)) & mask
    whole = len(key) - len(key) % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(key[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = key[whole:]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def delete_prefix(client: Any, prefix: str) -> int:
    """Delete every key under ``prefix`` (``<prefix>:…`` and the hash-tagged
    ``{<prefix>:…}…``; tests share one Redis); returns how many."""
    deleted = 0
    for pattern in (f"{prefix}:*", f"{{{prefix}:*"):
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
    return deleted
