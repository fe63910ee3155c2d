"""segstream's topics and their set-up, through any ``segstream.kafka_client`` backend.

Services receive a ``segstream.kafka_client.KafkaClients`` (``kafka_clients(settings)``)
instead of building clients themselves, so tests can hand in their own.
"""

from __future__ import annotations

from collections.abc import Sequence

from segstream.config import TopicSettings
from segstream.kafka_client import Admin, KafkaClients, TopicSpec

__all__ = ["KafkaClients", "TopicSpec", "describe", "ensure_topics", "topic_specs"]


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


def ensure_topics(admin: Admin, specs: Sequence[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    return admin.create_topics(specs)


def describe(admin: Admin, names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Partition count and cleanup.policy of each named topic that exists."""
    return admin.describe(names)
