"""The kafka-python backend of ``segstream.kafka_client`` (the default).

kafka-python 3.0.x reads its protocol schemas with deprecated ``importlib.resources``
calls at import time; exactly those DeprecationWarnings are filtered here. Two of its
consumer defects are worked around here: a group join that a poll left in flight could be
dropped (``_finish_pending_join``), and consumers created the topics they asked about
(``_never_create_topics``).
"""

from __future__ import annotations

import logging
import socket
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"(read_text|open_text) is deprecated", category=DeprecationWarning
    )
    import kafka
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.errors import (
        IllegalSaslStateError,
        KafkaError,
        SaslAuthenticationFailedError,
        TopicAlreadyExistsError,
        UnsupportedSaslMechanismError,
    )
    from kafka.structs import OffsetAndMetadata

from segstream.config import KafkaSettings
from segstream.kafka_client.interface import (
    NO_TOPIC_ID,
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

_DESCRIBED = ("cleanup.policy", "min.insync.replicas")  # topic configs describe() reports


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
        finally:
            _finish_pending_join(self.c)
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

    def beginning_offsets(self, partitions: Sequence[TopicPartition]
                          ) -> dict[TopicPartition, int]:
        try:
            firsts = self.c.beginning_offsets([_tp(tp) for tp in partitions])
        except KafkaError as exc:
            raise _error(exc) from None
        return {TopicPartition(tp.topic, tp.partition): off for tp, off in firsts.items()}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.c.seek(_tp(tp), offset)

    def partitions_for(self, topic: str) -> set[int]:
        return set(self.c.partitions_for_topic(topic) or ())

    def close(self) -> None:
        self.c.close(autocommit=False)


def _never_create_topics(consumer: kafka.KafkaConsumer) -> None:
    """A consumer's metadata requests must not create the topics they ask about (as
    librdkafka's consumer): on a broker with ``auto.create.topics.enable`` a service
    started before its topic would create it with the broker's defaults (one partition,
    no cleanup policy), and the topics job would then take it as existing. kafka-python
    3.0 does not pass its ``allow_auto_create_topics`` option to its metadata, so it is
    set there."""
    cluster = getattr(consumer, "_cluster", None)
    if cluster is not None and "allow_auto_create_topics" in getattr(cluster, "config", {}):
        cluster.config["allow_auto_create_topics"] = False


def _finish_pending_join(consumer: kafka.KafkaConsumer) -> None:
    """Mark a group join that a poll left in flight as still needed: the next poll applies it.

    kafka-python 3.0 leaves a JoinGroup/SyncGroup round in flight when the poll's timeout
    ends first, and takes its assignment only while ``need_rejoin()`` holds. A rejoin for
    changed topic metadata (a topic's partitions seen after the first join: a topic
    created just before or after subscribing, or partitions added) does not set the
    coordinator's sticky flag, and the round itself, as group leader, makes the metadata
    check false again, so the assignment is never applied: the member keeps no
    partitions, heartbeats stay off and nothing re-joins (no records, indefinitely).
    Setting the flag while a round is pending makes the next poll apply it.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None and getattr(coordinator, "_join_task", None) is not None:
        coordinator.request_rejoin()


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
        created = []
        for s in missing:  # one request each: a refusal names its own topic
            try:
                self.a.create_topics([NewTopic(s.name, s.partitions, s.replication,
                                               topic_configs=s.configs)], validate_only=False)
            except TopicAlreadyExistsError:
                continue  # created meanwhile, or listed late by stale metadata
            except KafkaError as exc:
                raise _error(exc) from None
            created.append(s.name)
        return created

    def describe(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        try:
            found = {
                meta["name"]: {"partitions": str(len(meta["partitions"])),
                               "replication": str(min(len(p["replica_nodes"])
                                                      for p in meta["partitions"]))}
                for meta in self.a.describe_topics(list(names))
                if not meta.get("error_code") and meta.get("partitions")
            }
            if found:
                resources = [ConfigResource(ConfigResourceType.TOPIC, name,
                                            configs=dict.fromkeys(_DESCRIBED))
                             for name in found]
                configs = self.a.describe_configs(resources).get("topic", {})
                for name, entries in configs.items():
                    for key in _DESCRIBED:
                        if key in entries:  # absent when the broker default
                            found[name][key] = entries[key]["value"]
        except KafkaError as exc:
            raise _error(exc) from None
        return found

    def topic_id(self, name: str) -> str | None:
        try:
            meta = self.a.describe_topics([name])
        except KafkaError as exc:
            raise _error(exc) from None
        found = meta[0].get("topic_id") if meta and not meta[0].get("error_code") else None
        return str(found) if found and str(found) != NO_TOPIC_ID else None

    def delete_topics(self, names: Sequence[str]) -> None:
        try:
            self.a.delete_topics(list(names))
        except KafkaError as exc:
            raise _error(exc) from None

    def delete_records(self, before: Mapping[TopicPartition, int]) -> None:
        try:
            self.a.delete_records({_tp(tp): off for tp, off in before.items()})
        except KafkaError as exc:
            raise _error(exc) from None

    def close(self) -> None:
        self.a.close()


RECONNECT_BACKOFF_MAX_MS = 1000


def connection_options(s: KafkaSettings) -> dict[str, Any]:
    """Connection and security options every kafka-python client takes."""
    opts: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers.split(","),
        "client_id": s.client_id,
        "security_protocol": s.security_protocol,
        "request_timeout_ms": s.request_timeout_ms,
        # kafka-python backs off up to 30 s between reconnects by default: after a broker
        # restart a client would sit that long on a broker that is back
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
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
        idle_ms = options.pop("consumer_timeout_ms", None)
        opts = {**self.common(), "group_id": group_id, "enable_auto_commit": False,
                "auto_offset_reset": auto_offset_reset, **options}
        try:
            raw = kafka.KafkaConsumer(**opts)
        except KafkaError as exc:
            raise _error(exc) from None
        _never_create_topics(raw)
        consumer = _Consumer(raw)
        if topics:
            consumer.subscribe(topics)
        if idle_ms is not None:
            consumer.idle_ms = idle_ms
        return consumer

    def producer(self, **options: Any) -> Producer:
        opts = {**self.common(), "acks": "all", "linger_ms": 5, "retries": 5, **options}
        try:
            return _Producer(kafka.KafkaProducer(**opts))
        except KafkaError as exc:
            raise _error(exc) from None

    def admin(self, **options: Any) -> Admin:
        common = self.common()
        common.pop("request_timeout_ms")
        try:
            return _Admin(kafka.KafkaAdminClient(**{**common, **options}))
        except KafkaError as exc:
            raise _error(exc) from None

    def connect_admin(self, timeout_ms: int) -> Admin:
        """kafka-python retries a rejected SASL login until the deadline and then reports
        only "Unable to bootstrap"; the rejection is recovered from its log records."""
        kafka_log = logging.getLogger("kafka")
        watched = [logging.getLogger(f"kafka.net.{name}") for name in _NET_LOGGERS]
        before = [kafka_log.level] + [log.level for log in watched]
        catcher = _AuthFailures()
        kafka_log.setLevel(logging.CRITICAL)  # refused connections are what we report
        for log in watched:
            log.setLevel(logging.WARNING)
            log.addFilter(catcher)
        try:
            admin = self.admin(bootstrap_timeout_ms=timeout_ms,
                               request_timeout_ms=max(timeout_ms, 1000),
                               reconnect_backoff_max_ms=1000)
        except Exception as exc:
            s = self.settings
            if catcher.seen:
                raise self.unreachable(_one_line(catcher.seen[-1]), rejected=True) from None
            if s.sasl_mechanism and _any_port_open(s.bootstrap_servers):
                # kafka-python sometimes sees the broker's close before its error reply
                raise KafkaClientError(
                    f"Kafka at {s.bootstrap_servers} accepts connections but the "
                    f"{s.sasl_mechanism} login of user {s.sasl_username!r} did not complete: "
                    f"wrong user or password, or the listener is not "
                    f"{s.security_protocol}") from None
            raise self.unreachable(_one_line(exc)) from None
        finally:
            kafka_log.setLevel(before[0])
            for log, level in zip(watched, before[1:], strict=True):
                log.removeFilter(catcher)
                log.setLevel(level)
        return admin


_NET_LOGGERS = ("manager", "connection", "transport")
_AUTH_ERRORS = (SaslAuthenticationFailedError, UnsupportedSaslMechanismError,
                IllegalSaslStateError)


class _AuthFailures(logging.Filter):
    """Catches the auth errors kafka-python only logs while it retries a bootstrap;
    installed on its connection loggers for one connect, it keeps the exceptions and
    drops the records (the caller reports them in one line)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        self.seen += [a for a in args if isinstance(a, _AUTH_ERRORS)]
        return False


def _any_port_open(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), 2):
                return True
        except (OSError, ValueError):
            continue
    return False


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
