"""The kafka-python backend of ``segstream.kafka_client`` (the default).

kafka-python 3.0.x reads its protocol schemas with deprecated ``importlib.resources``
calls at import time; exactly those DeprecationWarnings are filtered here.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"(read_text|open_text) is deprecated", category=DeprecationWarning
    )
    import kafka
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError
    from kafka.structs import OffsetAndMetadata

from segstream.config import KafkaSettings
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


def _error(exc: Exception) -> KafkaClientError:
    return KafkaClientError(f"{type(exc).__name__}: {exc}")


def _tp(tp: TopicPartition) -> kafka.TopicPartition:
    return kafka.TopicPartition(tp.topic, tp.partition)


class _Pending(Pending):
    def __init__(self, future: Any) -> None:
        self.future = future

    def get(self, timeout: float = 30.0) -> Delivery:
        try:
            meta = self.future.get(timeout=timeout)
        except KafkaError as exc:
            raise _error(exc) from None
        return Delivery(meta.topic, meta.partition, meta.offset)


class _Consumer(Consumer):
    def __init__(self, consumer: kafka.KafkaConsumer) -> None:
        self.c = consumer

    def subscribe(self, topics: Sequence[str]) -> None:
        self.c.subscribe(list(topics))

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self.c.assign([_tp(tp) for tp in partitions])

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        try:
            polled = self.c.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise _error(exc) from None
        return [Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp,
                       r.headers or ()) for batch in polled.values() for r in batch]

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            self.c.commit({_tp(tp): OffsetAndMetadata(off, "", -1)
                           for tp, off in offsets.items()})
        except KafkaError as exc:
            raise _error(exc) from None

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self.c.assignment()}

    def position(self, tp: TopicPartition) -> int | None:
        try:
            return self.c.position(_tp(tp))
        except KafkaError as exc:
            raise _error(exc) from None

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.c.highwater(_tp(tp))

    def committed(self, tp: TopicPartition) -> int | None:
        try:
            return self.c.committed(_tp(tp))
        except KafkaError as exc:
            raise _error(exc) from None

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        try:
            ends = self.c.end_offsets([_tp(tp) for tp in partitions])
        except KafkaError as exc:
            raise _error(exc) from None
        return {TopicPartition(tp.topic, tp.partition): off for tp, off in ends.items()}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.c.seek(_tp(tp), offset)

    def partitions_for(self, topic: str) -> set[int]:
        return set(self.c.partitions_for_topic(topic) or ())

    def close(self) -> None:
        self.c.close(autocommit=False)


class _Producer(Producer):
    def __init__(self, producer: kafka.KafkaProducer) -> None:
        self.p = producer

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Sequence[tuple[str, bytes]] | None = None) -> Pending:
        try:
            return _Pending(self.p.send(topic, value=value, key=key,
                                        headers=list(headers) if headers else None))
        except KafkaError as exc:
            raise _error(exc) from None

    def flush(self, timeout: float | None = None) -> None:
        try:
            self.p.flush(timeout=timeout)
        except KafkaError as exc:
            raise _error(exc) from None

    def close(self, timeout: float | None = None) -> None:
        self.p.close(timeout=timeout)


class _Admin(Admin):
    def __init__(self, admin: kafka.KafkaAdminClient) -> None:
        self.a = admin

    def list_topics(self) -> set[str]:
        try:
            return set(self.a.list_topics())
        except KafkaError as exc:
            raise _error(exc) from None

    def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        missing = [s for s in specs if s.name not in self.list_topics()]
        if not missing:
            return []
        new = [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs) for s in missing]
        try:
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile
                self.a.create_topics(new, validate_only=False)
        except KafkaError as exc:
            raise _error(exc) from None
        return [s.name for s in missing]

    def describe(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        try:
            found = {
                meta["name"]: {"partitions": str(len(meta["partitions"]))}
                for meta in self.a.describe_topics(list(names))
                if not meta.get("error_code") and meta.get("partitions")
            }
            if found:
                resources = [ConfigResource(ConfigResourceType.TOPIC, name,
                                            configs={"cleanup.policy": None})
                             for name in found]
                configs = self.a.describe_configs(resources).get("topic", {})
                for name, entries in configs.items():
                    if "cleanup.policy" in entries:  # absent when the broker default
                        found[name]["cleanup.policy"] = entries["cleanup.policy"]["value"]
        except KafkaError as exc:
            raise _error(exc) from None
        return found

    def delete_topics(self, names: Sequence[str]) -> None:
        try:
            self.a.delete_topics(list(names))
        except KafkaError as exc:
            raise _error(exc) from None

    def close(self) -> None:
        self.a.close()


def connection_options(s: KafkaSettings) -> dict[str, Any]:
    """Connection and security options every kafka-python client takes."""
    opts: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers.split(","),
        "client_id": s.client_id,
        "security_protocol": s.security_protocol,
        "request_timeout_ms": s.request_timeout_ms,
    }
    if s.sasl_mechanism:
        opts["sasl_mechanism"] = s.sasl_mechanism
        opts["sasl_plain_username"] = s.sasl_username
        opts["sasl_plain_password"] = (
            s.sasl_password.get_secret_value() if s.sasl_password else None)
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(s, key):
            opts[key] = getattr(s, key)
    return opts


class KafkaPythonClients(KafkaClients):
    """kafka-python clients."""

    name = "kafka-python"

    def common(self) -> dict[str, Any]:
        """Connection and security options every kafka-python client takes."""
        return connection_options(self.settings)

    def consumer(self, *topics: str, group_id: str | None,
                 auto_offset_reset: str = "earliest", **options: Any) -> Consumer:
        opts = {**self.common(), "group_id": group_id, "enable_auto_commit": False,
                "auto_offset_reset": auto_offset_reset, **options}
        try:
            return _Consumer(kafka.KafkaConsumer(*topics, **opts))
        except KafkaError as exc:
            raise _error(exc) from None

    def producer(self, **options: Any) -> Producer:
        opts = {**self.common(), "acks": "all", "linger_ms": 5, "retries": 5, **options}
        try:
            return _Producer(kafka.KafkaProducer(**opts))
        except KafkaError as exc:
            raise _error(exc) from None

    def admin(self) -> Admin:
        common = self.common()
        common.pop("request_timeout_ms")
        try:
            return _Admin(kafka.KafkaAdminClient(**common))
        except KafkaError as exc:
            raise _error(exc) from None
