"""Session fixtures that reach the real local Kafka broker and Redis.

``infra`` starts both (idempotently) through the same code as ``segstream up`` and stops
whatever it started at the end of the session. Tests isolate themselves with ``unique``
names (topics, consumer groups, Redis key prefixes) instead of wiping shared state, and
wait with ``tests.helpers.wait_until`` deadlines instead of sleeping.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from segstream.config import Settings, load_settings
from segstream.kafka_client import KafkaClients, kafka_clients
from segstream.redis_io import redis_client


@pytest.fixture(scope="session")
def infra() -> Iterator[Settings]:
    """Settings for the real local Kafka + Redis, started for this session if needed."""
    from segstream_services.dev import localinfra

    settings = load_settings()
    started = localinfra.up(settings)
    yield settings
    if any(started.values()):
        localinfra.down(settings)


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Iterator[str]:
    """A name unique to this test run: use it for topics, groups and key prefixes. When
    the test reached the local Redis (``infra``), the keys under that prefix are deleted
    afterwards, so runs on one machine (the local Redis keeps an AOF) do not pile up."""
    name = request.node.name.replace("[", "-").replace("]", "").lower()
    prefix = f"t-{name[:40]}-{uuid.uuid4().hex[:8]}"
    yield prefix
    if "infra" in request.fixturenames:
        drop_prefix(request.getfixturevalue("infra"), prefix)


def drop_prefix(settings: Settings, prefix: str) -> int:
    """``tests.helpers.delete_prefix`` on the local Redis; an unreachable Redis deletes
    none."""
    from tests.helpers import delete_prefix

    client = redis_client(settings.redis)
    try:
        return delete_prefix(client, prefix)
    except redis.RedisError:
        return 0
    finally:
        client.close()


@pytest.fixture
def kafka_backend(request: pytest.FixtureRequest, infra: Settings) -> str:
    """This test's Kafka client backend: the one it is parametrised with
    (``tests.helpers.both_kafka_clients``), else the configured ``kafka.client``."""
    return str(getattr(request, "param", infra.kafka.client))


@pytest.fixture
def kafka_infra(infra: Settings, kafka_backend: str) -> Settings:
    """``infra`` with this test's Kafka client backend."""
    return infra.model_copy(update={
        "kafka": infra.kafka.model_copy(update={"client": kafka_backend})})


@pytest.fixture
def kafka(kafka_infra: Settings) -> KafkaClients:
    """Clients of this test's Kafka backend (kafka-python unless configured otherwise)."""
    return kafka_clients(kafka_infra.kafka)


@pytest.fixture
def redis_conn(infra: Settings) -> Iterator[redis.Redis]:
    client = redis_client(infra.redis)
    yield client
    client.close()


@pytest.fixture
def service_threads() -> Iterator[list[tuple[Any, threading.Thread]]]:
    """Services a test runs as threads of its own process, as ``(service, thread)``:
    each is stopped (``service.stop()``) and joined at the end, in start order."""
    started: list[tuple[Any, threading.Thread]] = []
    yield started
    for svc, thread in started:
        svc.stop()
        thread.join(30)
