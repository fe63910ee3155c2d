"""1,000 keyed events through the real broker: all come back, each from its key's partition."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from kafka import TopicPartition
from kafka.admin import NewTopic
from kafka.partitioner.default import murmur2

from segstream.config import DEFAULT_EVENT_TYPES
from segstream.events import parse_event
from segstream.kafka_io import KafkaClients, describe
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
PARTITIONS = 6
N_EVENTS = 1_000


def expected_partition(key: bytes) -> int:
    """Kafka's default partitioner (Java and kafka-python alike): murmur2 of the key."""
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def test_thousand_keyed_events_come_back_from_the_right_partitions(
    kafka: KafkaClients, unique: str
) -> None:
    topic = f"{unique}.events"
    admin = kafka.admin()
    try:
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        wait_until(lambda: describe(admin, [topic]).get(topic), what="topic metadata")
    finally:
        admin.close()

    sent: dict[str, dict] = {}
    producer = kafka.producer()
    for i in range(N_EVENTS):
        event = {"event_id": f"{unique}-{i}", "user_id": f"user-{i % 37}",
                 "ts": 1_795_857_300_000 + i, "type": DEFAULT_EVENT_TYPES[i % 9],
                 "item_id": f"item-{i % 101}", "price": round(i * 0.37, 2)}
        sent[event["event_id"]] = event
        producer.send(topic, key=event["user_id"].encode(), value=json.dumps(event).encode())
    producer.flush(timeout=30)
    producer.close()

    consumer = kafka.consumer(topic, group_id=f"{unique}.group", consumer_timeout_ms=1_000)
    received: list = []
    try:
        def drain() -> bool:
            for batch in consumer.poll(timeout_ms=500, max_records=500).values():
                received.extend(batch)
            return len(received) >= N_EVENTS

        wait_until(drain, timeout_s=60, interval_s=0, what=f"{N_EVENTS} records")
        consumer.commit()
        committed = {p: consumer.committed(TopicPartition(topic, p)) or 0
                     for p in range(PARTITIONS)}
    finally:
        consumer.close()

    events = [parse_event(r.value, DEFAULT_EVENT_TYPES) for r in received]
    assert sorted(e.event_id for e in events) == sorted(sent)  # every one, exactly once
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    last_offset: dict[int, int] = {}
    for record in received:
        assert record.partition == expected_partition(record.key)
        partitions_of_key[record.key].add(record.partition)
        assert record.offset > last_offset.get(record.partition, -1)  # in order per partition
        last_offset[record.partition] = record.offset
    assert all(len(p) == 1 for p in partitions_of_key.values())
    assert len({p for ps in partitions_of_key.values() for p in ps}) > 1  # really spread
    assert sum(committed.values()) == N_EVENTS
