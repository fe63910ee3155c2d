"""segstream.kafka_client on the real broker, for each backend (kafka-python, confluent):
1,000 keyed events come back exactly once, each from its key's partition (the Java
client's murmur2 partitioner for both), with their headers and timestamps; commits,
committed offsets, end offsets, assign + seek, delivery results and admin create/describe.
(The ingest, segmenter and scale-out tests run on each backend in their own files:
``tests.helpers.both_kafka_clients``.)"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict

import pytest

from segstream.config import DEFAULT_EVENT_TYPES, Settings
from segstream.events import parse_event
from segstream.kafka_client import (
    KafkaClientError,
    KafkaClients,
    Record,
    TopicPartition,
    TopicSpec,
    kafka_clients,
)
from tests.helpers import KAFKA_BACKENDS, murmur2_partition, wait_until

pytestmark = pytest.mark.integration
PARTITIONS = 6
N_EVENTS = 1_000


@pytest.fixture(params=KAFKA_BACKENDS)
def clients(request: pytest.FixtureRequest, infra: Settings) -> KafkaClients:
    return kafka_clients(infra.kafka.model_copy(update={"client": request.param}))


def expected_partition(key: bytes) -> int:
    """Kafka's default partitioner (Java and kafka-python alike): murmur2 of the key."""
    return murmur2_partition(key, PARTITIONS)


def create(clients: KafkaClients, topic: str, partitions: int = PARTITIONS) -> None:
    admin = clients.admin()
    try:
        spec = TopicSpec(topic, partitions, {"cleanup.policy": "delete"})
        assert admin.create_topics([spec]) == [topic]
        assert admin.create_topics([spec]) == []  # exists now: nothing to create
        wait_until(lambda: admin.describe([topic]).get(topic), what="topic metadata")
        assert admin.describe([topic, f"{topic}.missing"]) == {
            topic: {"partitions": str(partitions), "replication": "1",
                    "cleanup.policy": "delete"}}
        assert topic in admin.list_topics()
    finally:
        admin.close()


def test_thousand_keyed_events_come_back_from_the_right_partitions(
        clients: KafkaClients, unique: str) -> None:
    topic = f"{unique}.events"
    create(clients, topic)
    sent: dict[str, dict] = {}
    producer = clients.producer()
    pending = []
    for i in range(N_EVENTS):
        event = {"event_id": f"{unique}-{i}", "user_id": f"user-{i % 37}",
                 "ts": 1_795_857_300_000 + i, "type": DEFAULT_EVENT_TYPES[i % 9],
                 "item_id": f"item-{i % 101}", "price": round(i * 0.37, 2)}
        sent[event["event_id"]] = event
        pending.append(producer.send(topic, key=event["user_id"].encode(),
                                     value=json.dumps(event).encode(),
                                     headers=[("n", str(i).encode())]))
    producer.flush(timeout=30)
    deliveries = [p.get(timeout=30) for p in pending]
    producer.close(timeout=10)
    assert {d.topic for d in deliveries} == {topic}
    assert len({(d.partition, d.offset) for d in deliveries}) == N_EVENTS

    consumer = clients.consumer(topic, group_id=f"{unique}.group")
    received: list[Record] = []
    try:
        def drain() -> bool:
            received.extend(consumer.poll(timeout_ms=500, max_records=500))
            return len(received) >= N_EVENTS

        wait_until(drain, timeout_s=60, interval_s=0, what=f"{N_EVENTS} records")
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(PARTITIONS)}
        last: dict[TopicPartition, int] = {}
        for r in received:
            last[TopicPartition(r.topic, r.partition)] = r.offset + 1
        consumer.commit(last)
        committed = {p: consumer.committed(TopicPartition(topic, p)) or 0
                     for p in range(PARTITIONS)}
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        assert consumer.partitions_for(topic) == set(range(PARTITIONS))
        assert consumer.partitions_for(f"{unique}.missing") == set()
    finally:
        consumer.close()

    events = [parse_event(r.value or b"", DEFAULT_EVENT_TYPES) for r in received]
    assert sorted(e.event_id for e in events) == sorted(sent)  # every one, exactly once
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    last_offset: dict[int, int] = {}
    for record in received:
        assert record.key is not None and record.timestamp_ms > 1_700_000_000_000
        assert record.partition == expected_partition(record.key)
        n = dict(record.headers)["n"].decode()
        assert json.loads(record.value or b"")["event_id"] == f"{unique}-{n}"
        partitions_of_key[record.key].add(record.partition)
        assert record.offset > last_offset.get(record.partition, -1)  # in order per partition
        last_offset[record.partition] = record.offset
    assert all(len(p) == 1 for p in partitions_of_key.values())
    assert len({p for ps in partitions_of_key.values() for p in ps}) > 1  # really spread
    assert sum(committed.values()) == N_EVENTS
    assert {tp.partition: off for tp, off in ends.items()} == committed


def test_assign_and_seek_read_from_an_offset_without_a_group(
        clients: KafkaClients, unique: str) -> None:
    topic = f"{unique}.t"
    create(clients, topic, partitions=1)
    producer = clients.producer()
    for i in range(20):
        producer.send(topic, value=str(i).encode())
    producer.flush(timeout=30)
    producer.close(timeout=10)
    tp = TopicPartition(topic, 0)
    consumer = clients.consumer(group_id=None)
    got: list[Record] = []
    try:
        consumer.assign([tp])
        consumer.seek(tp, 15)

        def drain() -> bool:
            got.extend(consumer.poll(timeout_ms=300, max_records=100))
            return len(got) >= 5

        wait_until(drain, timeout_s=30, interval_s=0, what="records from offset 15")
        assert consumer.position(tp) == 20
    finally:
        consumer.close()
    assert [r.value for r in got] == [str(i).encode() for i in range(15, 20)]


def test_a_record_over_the_size_limit_fails_with_a_client_error(
        clients: KafkaClients, unique: str) -> None:
    topic = f"{unique}.big"
    create(clients, topic, partitions=1)
    producer = clients.producer()
    try:
        with pytest.raises(KafkaClientError):
            producer.send(topic, value=b"x" * (2 << 20)).get(timeout=10)  # limit: 1 MB
        producer.send(topic, value=b"fits").get(timeout=10)  # the producer still works
    finally:
        producer.close(timeout=5)


def test_iteration_offsets_ids_and_record_deletion(clients: KafkaClients, unique: str) -> None:
    topic = f"{unique}.ids"
    create(clients, topic, partitions=1)
    producer = clients.producer()
    for i in range(10):
        producer.send(topic, value=str(i).encode())
    producer.flush(timeout=30)
    producer.close(timeout=10)
    tp = TopicPartition(topic, 0)
    admin = clients.connect_admin(5000)
    try:
        found = admin.topic_id(topic)
        assert found is not None and str(uuid.UUID(found)) == found  # a UUID string
        assert admin.topic_id(f"{topic}.missing") is None
        admin.delete_records({tp: 4})  # what retention does
    finally:
        admin.close()
    consumer = clients.consumer(topic, group_id=None, consumer_timeout_ms=2000)
    try:
        assert consumer.beginning_offsets([tp]) == {tp: 4}
        assert consumer.end_offsets([tp]) == {tp: 10}
        # iterating ends once a poll of consumer_timeout_ms brings nothing
        assert [r.value for r in consumer] == [str(i).encode() for i in range(4, 10)]
    finally:
        consumer.close()
