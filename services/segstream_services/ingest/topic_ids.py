"""Which incarnation of a topic a record came from: the topic's id (Kafka's topic UUID).

Ingest's per-user offset watermarks (``segstream.feature_store``) are keyed by what
``TopicIds.key`` returns, not by the topic's name: a topic deleted and created again (or
a mirror under the same name) starts its offsets at 0 with a new id, so its records are
not mistaken for redeliveries of the old topic's. A topic's id is read from the cluster
(``describeTopics``) the first time the topic is seen and again whenever a partition's
offsets go backwards in this process (a seek after a rebalance, a retried batch, or an
offset reset onto a new log); a broker without topic ids gives the name.
"""

from __future__ import annotations

from segstream.config import KafkaSettings
from segstream.kafka_client import Admin, KafkaClientError, kafka_clients


class TopicIds:
    """Topic name → watermark key (``id:<uuid>``, or the name when the broker has none)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._admin: Admin | None = None
        self._ids: dict[str, str] = {}
        self._last: dict[tuple[str, int], int] = {}  # highest offset seen per partition

    def key(self, topic: str, partition: int, offset: int) -> str:
        """The watermark key of a record at ``offset`` of ``topic``/``partition``."""
        last = self._last.get((topic, partition))
        if topic not in self._ids or (last is not None and offset <= last):
            self._ids[topic] = self._describe(topic)
        self._last[(topic, partition)] = offset
        return self._ids[topic]

    def _describe(self, topic: str) -> str:
        try:
            if self._admin is None:
                self._admin = kafka_clients(self.settings).admin()
            found = self._admin.topic_id(topic)
        except KafkaClientError as exc:
            self.close()
            raise KafkaClientError(f"cannot read the id of topic {topic}: {exc}") from None
        return f"id:{found}" if found else topic

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
