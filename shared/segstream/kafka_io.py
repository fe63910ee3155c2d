"""Kafka client factories and topic set-up.

Services receive a ``KafkaClients`` (built from settings) instead of building clients
themselves, so tests can hand in their own. kafka-python 3.0.x reads its protocol
schemas with deprecated ``importlib.resources`` calls at import time; exactly those
DeprecationWarnings are filtered here, nothing else.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"(read_text|open_text) is deprecated", category=DeprecationWarning
    )
    import kafka
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.errors import TopicAlreadyExistsError

from segstream.config import KafkaSettings, TopicSettings

KAFKA_PYTHON_VERSION: str = kafka.__version__


@dataclass(frozen=True)
class TopicSpec:
    """A topic with the explicit settings it is created with."""

    name: str
    partitions: int
    configs: dict[str, str]
    replication: int = 1


def topic_specs(topics: TopicSettings) -> list[TopicSpec]:
    """The segstream topics (docs/contracts.md) with their settings: partitions, cleanup
    policy, ``topics.replication_factor`` and ``min.insync.replicas``."""
    rf, insync = topics.replication_factor, str(topics.min_insync_replicas)

    def spec(name: str, partitions: int, cleanup: str) -> TopicSpec:
        return TopicSpec(name, partitions,
                         {"cleanup.policy": cleanup, "min.insync.replicas": insync}, rf)

    return [
        spec(topics.events, topics.events_partitions, "delete"),
        spec(topics.segments, topics.segments_partitions, "delete"),
        spec(topics.dlq, 1, "delete"),
        spec(topics.catalog, 1, "compact"),
        # each user's current assignment (key = user id, tombstone on forget): a new
        # subscriber rebuilds the current state from offset 0 after the change feed expired
        spec(topics.assignments, topics.segments_partitions, "compact"),
    ]


class KafkaClients:
    """Builds producers, consumers and admin clients that share connection settings."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings

    def common(self) -> dict[str, Any]:
        """Connection and security options every kafka-python client takes."""
        from segstream.kafka_client.kafka_python import connection_options

        return connection_options(self.settings)

    def producer(self, **overrides: Any) -> KafkaProducer:
        """A producer that waits for the leader's and ISR's acks and retries safely."""
        opts = {**self.common(), "acks": "all", "linger_ms": 5, "retries": 5, **overrides}
        return KafkaProducer(**opts)

    def consumer(self, *topics: str, group_id: str | None, **overrides: Any) -> KafkaConsumer:
        """A consumer with auto-commit off: services commit after their state is durable."""
        opts = {
            **self.common(),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            **overrides,
        }
        return KafkaConsumer(*topics, **opts)

    def admin(self, **overrides: Any) -> KafkaAdminClient:
        common = self.common()
        common.pop("request_timeout_ms")
        return KafkaAdminClient(**common, **overrides)


def ensure_topics(admin: KafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    existing = set(admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    new = [NewTopic(s.name, s.partitions, s.replication, topic_configs=s.configs)
           for s in missing]
    # created concurrently by another process: same outcome
    with contextlib.suppress(TopicAlreadyExistsError):
        admin.create_topics(new, validate_only=False)
    return [s.name for s in missing]


def describe(admin: KafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Partition count and cleanup.policy of each named topic that exists."""
    found = {
        meta["name"]: {"partitions": str(len(meta["partitions"]))}
        for meta in admin.describe_topics(names)
        if not meta.get("error_code") and meta.get("partitions")
    }
    if found:
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs={"cleanup.policy": None})
            for name in found
        ]
        configs = admin.describe_configs(resources).get("topic", {})
        for name, entries in configs.items():
            if "cleanup.policy" in entries:  # absent when the topic uses the broker default
                found[name]["cleanup.policy"] = entries["cleanup.policy"]["value"]
    return found
