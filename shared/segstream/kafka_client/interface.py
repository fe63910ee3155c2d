"""The Kafka client interface every backend implements (records, offsets, deliveries,
topics, one error type)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from segstream.config import KafkaSettings
from segstream.errors import InfraError

NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"


class KafkaClientError(InfraError):
    """A Kafka call failed (unreachable broker, refused commit, undelivered record, ...)."""


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record; ``headers`` as (name, value) pairs, ``timestamp_ms`` epoch ms."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Sequence[tuple[str, bytes]] = ()

    @property
    def timestamp(self) -> int:
        """The record timestamp in epoch ms (kafka-python's name for it)."""
        return self.timestamp_ms


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored a sent record."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class TopicSpec:
    """A topic with the explicit settings it is created with."""

    name: str
    partitions: int
    configs: dict[str, str]
    replication: int = 1


class Pending(ABC):
    """A sent record whose delivery may not be confirmed yet."""

    @abstractmethod
    def get(self, timeout: float = 30.0) -> Delivery:
        """Wait for the broker's ack; raise ``KafkaClientError`` if it refused or timed out."""


class Consumer(ABC):
    """A consumer with auto-commit off: services commit after their state is durable.

    Iterating it yields records until one poll of ``idle_ms`` (the consumer option
    ``consumer_timeout_ms``, 1000 by default) brings none.
    """

    idle_ms: int = 1000

    def __iter__(self) -> Iterator[Record]:
        while batch := self.poll(self.idle_ms, 500):
            yield from batch

    @abstractmethod
    def subscribe(self, topics: Sequence[str]) -> None: ...

    @abstractmethod
    def assign(self, partitions: Sequence[TopicPartition]) -> None: ...

    @abstractmethod
    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        """Up to ``max_records`` records, waiting up to ``timeout_ms`` for the first."""

    @abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit the next offset to read of each partition (synchronously)."""

    @abstractmethod
    def assignment(self) -> set[TopicPartition]: ...

    @abstractmethod
    def position(self, tp: TopicPartition) -> int | None:
        """The offset of the next record this consumer reads from ``tp``."""

    @abstractmethod
    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end offset as last seen by a fetch (None: not known yet)."""

    @abstractmethod
    def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp`` (None: none)."""

    @abstractmethod
    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The partitions' current end offsets, asked from the broker."""

    @abstractmethod
    def beginning_offsets(self, partitions: Sequence[TopicPartition]
                          ) -> dict[TopicPartition, int]:
        """The partitions' first offsets still in the log, asked from the broker."""

    @abstractmethod
    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    @abstractmethod
    def partitions_for(self, topic: str) -> set[int]:
        """The topic's partition numbers (empty when it does not exist)."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group (no commit) and release the connections."""


class Producer(ABC):
    """A producer that waits for the leader's and ISR's acks and retries safely."""

    @abstractmethod
    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Sequence[tuple[str, bytes]] | None = None) -> Pending: ...

    @abstractmethod
    def flush(self, timeout: float | None = None) -> None:
        """Wait until every sent record is acked or failed."""

    @abstractmethod
    def close(self, timeout: float | None = None) -> None: ...


class Admin(ABC):
    """Topic administration."""

    @abstractmethod
    def list_topics(self) -> set[str]: ...

    @abstractmethod
    def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        """Create the topics that do not exist yet; return the names created (a topic
        created meanwhile by another process counts as existing)."""

    @abstractmethod
    def describe(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Each existing named topic's ``partitions``, ``replication`` (replicas of its
        least replicated partition) and, when set on the topic, ``cleanup.policy`` and
        ``min.insync.replicas``."""

    @abstractmethod
    def topic_id(self, name: str) -> str | None:
        """The topic's id as a UUID string (a new one when the topic is deleted and
        created again); None when the topic or the broker has none."""

    @abstractmethod
    def delete_topics(self, names: Sequence[str]) -> None: ...

    @abstractmethod
    def delete_records(self, before: Mapping[TopicPartition, int]) -> None:
        """Delete each partition's records below the given offset (what retention does)."""

    @abstractmethod
    def close(self) -> None: ...


class KafkaClients(ABC):
    """Builds consumers, producers and admin clients that share connection settings.

    Options are the same for both backends: consumer ``auto_offset_reset``
    (earliest/latest), ``max_poll_records``, ``max_partition_fetch_bytes``,
    ``fetch_max_bytes``, ``fetch_max_wait_ms``, ``session_timeout_ms``,
    ``heartbeat_interval_ms``, ``consumer_timeout_ms`` (the idle time
    that ends iteration); producer ``linger_ms``, ``batch_size``, ``max_request_size``.
    """

    name: str

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings

    @abstractmethod
    def common(self) -> dict[str, Any]:
        """The connection and security options every client of this backend takes, in
        the backend's own names."""

    @abstractmethod
    def connect_admin(self, timeout_ms: int) -> Admin:
        """An admin client that has answered a metadata request within ``timeout_ms``,
        or ``KafkaClientError`` with a one-line reason (see ``unreachable``)."""

    def unreachable(self, reason: str, *, rejected: bool = False) -> KafkaClientError:
        """The one-line error of a failed connect: the SASL login was rejected, or the
        broker did not answer a metadata request."""
        s = self.settings
        where = s.bootstrap_servers
        if rejected:
            return KafkaClientError(f"Kafka at {where} rejected the {s.sasl_mechanism} "
                                    f"login of user {s.sasl_username!r}: {reason}")
        return KafkaClientError(f"Kafka at {where} did not answer a metadata request: "
                                f"{reason}")

    @abstractmethod
    def consumer(self, *topics: str, group_id: str | None,
                 auto_offset_reset: str = "earliest", **options: Any) -> Consumer: ...

    @abstractmethod
    def producer(self, **options: Any) -> Producer: ...

    @abstractmethod
    def admin(self) -> Admin: ...
