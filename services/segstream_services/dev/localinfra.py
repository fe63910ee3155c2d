"""Local infrastructure without Docker: a real Apache Kafka broker and a Redis server.

Kafka (KRaft, single node) runs from Maven Central jars: ``deploy/kafka/pom.xml`` is
resolved once into ``$SEGSTREAM_HOME/kafka/<pom hash>/lib`` and reused. Redis is Debian's
``redis-server`` (installed with apt-get when missing). Both run as detached processes
whose data, logs and pid files live in ``LocalInfraSettings.state_dir``.

Process handling is in ``processes``, each server in ``local_redis`` and ``local_kafka``;
this module holds the three commands. ``up`` is idempotent; ``down`` stops with SIGTERM
and, after ``stop_timeout_s``, SIGKILL.
"""

from __future__ import annotations

from segstream.config import Settings
from segstream.kafka_io import ensure_topics, topic_specs
from segstream_services.dev.local_kafka import LocalKafka, kafka_clients
from segstream_services.dev.local_redis import LocalRedis
from segstream_services.dev.processes import ServiceStatus


def up(settings: Settings) -> dict[str, bool]:
    """Start Redis and Kafka unless running, then create the topics. Idempotent.

    Every port is checked before anything starts, so a conflict leaves nothing behind.
    """
    redis_, kafka = LocalRedis(settings.local), LocalKafka(settings.local)
    redis_.check_ports()
    kafka.check_ports()
    started = {"redis": redis_.start(settings), "kafka": kafka.start(settings)}
    admin = kafka_clients(settings, f"127.0.0.1:{settings.local.kafka_port}").admin()
    try:
        ensure_topics(admin, topic_specs(settings.topics))
    finally:
        admin.close()
    return started


def down(settings: Settings) -> dict[str, bool]:
    """Stop Kafka, then Redis. Returns which of them were running."""
    return {
        "kafka": LocalKafka(settings.local).stop(),
        "redis": LocalRedis(settings.local).stop(),
    }


def status(settings: Settings) -> list[ServiceStatus]:
    local = settings.local
    return [LocalKafka(local).status(settings), LocalRedis(local).status(settings)]
