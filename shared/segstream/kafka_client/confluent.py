"""The confluent-kafka (librdkafka) backend of ``segstream.kafka_client``
(``kafka.client = "confluent"``; the optional extra ``segstream[fast]``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import confluent_kafka as ck
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    ConfigSource,
    NewTopic,
    ResourceType,
)

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

_TIMEOUT_S = 10.0
_ON_TOPIC = ConfigSource.DYNAMIC_TOPIC_CONFIG.value  # a config set on the topic itself
# consumer option (kafka-python name) -> librdkafka property
_CONSUMER_OPTS = {"max_partition_fetch_bytes": "max.partition.fetch.bytes",
                  "fetch_max_bytes": "fetch.max.bytes",
                  "session_timeout_ms": "session.timeout.ms",
                  "heartbeat_interval_ms": "heartbeat.interval.ms",
                  "fetch_max_wait_ms": "fetch.wait.max.ms"}
_PRODUCER_OPTS = {"linger_ms": "linger.ms", "batch_size": "batch.size", "acks": "acks",
                  "retries": "retries", "max_request_size": "message.max.bytes"}


def _error(exc: Exception) -> KafkaClientError:
    err = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
    return KafkaClientError(f"{err.name()}: {err.str()}" if err else f"{type(exc).__name__}: "
                            f"{exc}")


def _tp(tp: TopicPartition, offset: int = ck.OFFSET_INVALID) -> ck.TopicPartition:
    return ck.TopicPartition(tp.topic, tp.partition, offset)


class _Pending(Pending):
    def __init__(self, producer: ck.Producer) -> None:
        self.producer = producer
        self.done = False
        self.delivery: Delivery | None = None
        self.error: str | None = None

    def callback(self, err: ck.KafkaError | None, msg: Any) -> None:
        self.done = True
        if err is not None:
            self.error = f"{err.name()}: {err.str()}"
        else:
            self.delivery = Delivery(msg.topic(), msg.partition(), msg.offset())

    def get(self, timeout: float = 30.0) -> Delivery:
        deadline = time.monotonic() + timeout
        while not self.done and time.monotonic() < deadline:
            self.producer.poll(min(0.1, max(0.0, deadline - time.monotonic())))
        if not self.done:
            raise KafkaClientError(f"no delivery report within {timeout:.0f}s")
        if self.delivery is None:
            raise KafkaClientError(f"delivery failed: {self.error}")
        return self.delivery


class _Consumer(Consumer):
    def __init__(self, consumer: ck.Consumer) -> None:
        self.c = consumer
        self.manual: dict[TopicPartition, int] = {}  # assign()ed partitions -> start offset

    def subscribe(self, topics: Sequence[str]) -> None:
        self.c.subscribe(list(topics))

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self.manual = {tp: ck.OFFSET_STORED for tp in partitions}
        self.c.assign([_tp(tp, off) for tp, off in self.manual.items()])

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        try:
            msgs: list[Any] = self.c.consume(num_messages=max_records,
                                             timeout=timeout_ms / 1000)
        except ck.KafkaException as exc:
            raise _error(exc) from None
        out = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaClientError(f"{err.name()}: {err.str()}")
                continue  # partition EOF, transient broker errors: librdkafka retries
            out.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                              m.timestamp()[1], m.headers() or ()))
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            done = self.c.commit(offsets=[_tp(tp, off) for tp, off in offsets.items()],
                                 asynchronous=False)
        except ck.KafkaException as exc:
            raise _error(exc) from None
        failed = [tp for tp in done or () if tp.error is not None]
        if failed:
            raise KafkaClientError(f"offset commit failed: {failed[0].error}")

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self.c.assignment()}

    def position(self, tp: TopicPartition) -> int | None:
        off = self.c.position([_tp(tp)])[0].offset
        return off if off >= 0 else None

    def highwater(self, tp: TopicPartition) -> int | None:
        try:
            high = self.c.get_watermark_offsets(_tp(tp), cached=True)[1]
        except ck.KafkaException:
            return None
        return high if high >= 0 else None

    def committed(self, tp: TopicPartition) -> int | None:
        try:
            off = self.c.committed([_tp(tp)], timeout=_TIMEOUT_S)[0].offset
        except ck.KafkaException as exc:
            raise _error(exc) from None
        return off if off >= 0 else None

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        try:
            return {tp: self.c.get_watermark_offsets(_tp(tp), timeout=_TIMEOUT_S)[1]
                    for tp in partitions}
        except ck.KafkaException as exc:
            raise _error(exc) from None

    def beginning_offsets(self, partitions: Sequence[TopicPartition]
                          ) -> dict[TopicPartition, int]:
        try:
            return {tp: self.c.get_watermark_offsets(_tp(tp), timeout=_TIMEOUT_S)[0]
                    for tp in partitions}
        except ck.KafkaException as exc:
            raise _error(exc) from None

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp in self.manual:  # not fetching yet: re-assign from the offset
            self.manual[tp] = offset
            self.c.assign([_tp(t, off) for t, off in self.manual.items()])
        else:
            self.c.seek(_tp(tp, offset))

    def partitions_for(self, topic: str) -> set[int]:
        meta = self.c.list_topics(topic, timeout=_TIMEOUT_S).topics.get(topic)
        return set(meta.partitions) if meta is not None and meta.error is None else set()

    def close(self) -> None:
        self.c.close()


class _Producer(Producer):
    def __init__(self, producer: ck.Producer) -> None:
        self.p = producer

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Sequence[tuple[str, bytes]] | None = None) -> Pending:
        pending = _Pending(self.p)
        while True:
            try:
                self.p.produce(topic, value=value, key=key,
                               headers=list(headers) if headers else None,
                               on_delivery=pending.callback)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.p.poll(0.05)
            except ck.KafkaException as exc:
                raise _error(exc) from None
        self.p.poll(0)
        return pending

    def flush(self, timeout: float | None = None) -> None:
        left = self.p.flush(timeout if timeout is not None else -1)
        if left:
            raise KafkaClientError(f"{left} records not delivered within {timeout}s")

    def close(self, timeout: float | None = None) -> None:
        self.p.flush(timeout if timeout is not None else -1)


class _Admin(Admin):
    def __init__(self, admin: AdminClient, timeout_s: float = _TIMEOUT_S) -> None:
        self.a = admin
        self.timeout_s = timeout_s

    def _topics(self) -> dict[str, Any]:
        try:
            return dict(self.a.list_topics(timeout=self.timeout_s).topics)
        except ck.KafkaException as exc:
            raise _error(exc) from None

    def list_topics(self) -> set[str]:
        return {name for name, meta in self._topics().items() if meta.error is None}

    def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        existing = self.list_topics()
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        futures = self.a.create_topics([NewTopic(s.name, num_partitions=s.partitions,
                                                 replication_factor=s.replication,
                                                 config=s.configs)
                                        for s in missing])
        created = []
        for name, future in futures.items():
            try:
                future.result()
            except ck.KafkaException as exc:
                err = exc.args[0]
                if err.code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise _error(exc) from None
                continue  # created meanwhile, or listed late by stale metadata
            created.append(name)
        return [s.name for s in missing if s.name in created]

    def describe(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        topics = self._topics()
        found = {n: {"partitions": str(len(topics[n].partitions)),
                     "replication": str(min(len(p.replicas)
                                            for p in topics[n].partitions.values()))}
                 for n in names
                 if n in topics and topics[n].error is None and topics[n].partitions}
        if found:
            futures = self.a.describe_configs(
                [ConfigResource(ResourceType.TOPIC, name) for name in found])
            for resource, future in futures.items():
                try:
                    entries = future.result()
                except ck.KafkaException as exc:
                    raise _error(exc) from None
                for key in ("cleanup.policy", "min.insync.replicas"):
                    if key in entries and entries[key].source == _ON_TOPIC:
                        found[resource.name][key] = entries[key].value
        return found

    def topic_id(self, name: str) -> str | None:
        try:
            found = self.a.describe_topics(ck.TopicCollection([name]))[name].result().topic_id
        except ck.KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
            if err is not None and err.code() == ck.KafkaError.UNKNOWN_TOPIC_OR_PART:
                return None
            raise _error(exc) from None
        if found is None:
            return None
        # kafka-python's form (a UUID string), so the ids do not depend on the backend
        mask = (1 << 64) - 1
        text = str(UUID(int=(found.get_most_significant_bits() & mask) << 64
                        | found.get_least_significant_bits() & mask))
        return None if text == NO_TOPIC_ID else text

    def delete_topics(self, names: Sequence[str]) -> None:
        for future in self.a.delete_topics(list(names)).values():
            try:
                future.result()
            except ck.KafkaException as exc:
                raise _error(exc) from None

    def delete_records(self, before: Mapping[TopicPartition, int]) -> None:
        futures = self.a.delete_records([_tp(tp, off) for tp, off in before.items()])
        for future in futures.values():
            try:
                future.result()
            except ck.KafkaException as exc:
                raise _error(exc) from None

    def close(self) -> None:
        """AdminClient holds no resources that need an explicit close."""


class ConfluentClients(KafkaClients):
    """confluent-kafka clients."""

    name = "confluent"

    def common(self) -> dict[str, Any]:
        """Connection and security properties every librdkafka client takes."""
        s = self.settings
        conf: dict[str, Any] = {"bootstrap.servers": s.bootstrap_servers,
                                "client.id": s.client_id,
                                "security.protocol": s.security_protocol}
        if s.sasl_mechanism:
            conf["sasl.mechanism"] = s.sasl_mechanism
            conf["sasl.username"] = s.sasl_username
            conf["sasl.password"] = s.sasl_password.get_secret_value() if s.sasl_password \
                else None
        for key, prop in (("ssl_cafile", "ssl.ca.location"),
                          ("ssl_certfile", "ssl.certificate.location"),
                          ("ssl_keyfile", "ssl.key.location")):
            if getattr(s, key):
                conf[prop] = getattr(s, key)
        return conf

    def consumer(self, *topics: str, group_id: str | None,
                 auto_offset_reset: str = "earliest", **options: Any) -> Consumer:
        options.pop("max_poll_records", None)  # poll() takes the batch size
        idle_ms = options.pop("consumer_timeout_ms", None)
        unknown = set(options) - set(_CONSUMER_OPTS)
        if unknown:
            raise KafkaClientError(f"unsupported consumer option(s): {', '.join(unknown)}")
        conf = {**self.common(),
                # without a group (assign + seek readers) librdkafka still wants an id
                "group.id": group_id or f"segstream-nogroup-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False, "auto.offset.reset": auto_offset_reset,
                **{_CONSUMER_OPTS[k]: v for k, v in options.items()}}
        try:
            consumer = _Consumer(ck.Consumer(conf))
        except ck.KafkaException as exc:
            raise _error(exc) from None
        if topics:
            consumer.subscribe(topics)
        if idle_ms is not None:
            consumer.idle_ms = idle_ms
        return consumer

    def producer(self, **options: Any) -> Producer:
        unknown = set(options) - set(_PRODUCER_OPTS)
        if unknown:
            raise KafkaClientError(f"unsupported producer option(s): {', '.join(unknown)}")
        # murmur2_random: keyed records land where the Java client and kafka-python put
        # them (librdkafka's default hashes keys with CRC32)
        conf = {**self.common(), "acks": "all", "linger.ms": 5, "retries": 5,
                "partitioner": "murmur2_random",
                "request.timeout.ms": self.settings.request_timeout_ms,
                **{_PRODUCER_OPTS[k]: v for k, v in options.items()}}
        try:
            return _Producer(ck.Producer(conf))
        except ck.KafkaException as exc:
            raise _error(exc) from None

    def admin(self) -> Admin:
        return _Admin(AdminClient(self.common()))

    def connect_admin(self, timeout_ms: int) -> Admin:
        admin = AdminClient({**self.common(), "socket.timeout.ms": max(timeout_ms, 1000)})
        try:
            admin.list_topics(timeout=timeout_ms / 1000)
        except ck.KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
            reason = f"{err.name()}: {err.str()}" if err else str(exc)
            rejected = err is not None and err.code() == ck.KafkaError._AUTHENTICATION
            raise self.unreachable(reason.splitlines()[0], rejected=rejected) from None
        return _Admin(admin, _TIMEOUT_S)
