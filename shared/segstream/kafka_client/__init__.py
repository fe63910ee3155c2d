"""segstream's Kafka client interface, with a kafka-python and a confluent-kafka backend.

Services poll ``Record`` batches, commit ``{TopicPartition: next offset}``, send with a
``Pending`` delivery they can wait on, and create or describe topics through ``Admin``;
every failure is a ``KafkaClientError``. No type of either library leaves this package.
``kafka_clients(settings)`` picks the backend from ``settings.client``: ``kafka-python``
(the default) or ``confluent`` (librdkafka, the optional extra ``segstream[fast]``, e.g.
``SEGSTREAM_KAFKA__CLIENT=confluent``).
"""

from __future__ import annotations

from segstream.config import KafkaSettings
from segstream.errors import ConfigError
from segstream.kafka_client.interface import (
    Admin,
    Consumer,
    Delivery,
    KafkaClientError,
    KafkaClients,
    Pending,
    Producer,
    Record,
    TopicPartition,
    TopicSpec,
)

__all__ = [
    "Admin",
    "Consumer",
    "Delivery",
    "KafkaClientError",
    "KafkaClients",
    "Pending",
    "Producer",
    "Record",
    "TopicPartition",
    "TopicSpec",
    "kafka_clients",
]


def kafka_clients(settings: KafkaSettings) -> KafkaClients:
    """The client factory of the backend ``settings.client`` names."""
    if settings.client == "confluent":
        try:
            from segstream.kafka_client.confluent import ConfluentClients
        except ImportError:
            raise ConfigError("kafka.client=confluent needs confluent-kafka: "
                              "pip install 'segstream[fast]'") from None
        return ConfluentClients(settings)
    from segstream.kafka_client.kafka_python import KafkaPythonClients

    return KafkaPythonClients(settings)
