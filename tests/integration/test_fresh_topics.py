"""Group consumers on fresh topics, for each Kafka client backend: one that subscribes
right after its topic was created, and one that subscribes before the topic exists (the
topics job creates it later), are given every partition and read every record, those
produced before they joined included (``earliest``, no committed offsets). Polls are
short (1 ms), as the services' are: a poll often ends while the group join is in flight.

kafka-python 3.0 used to keep an empty assignment for good in both cases (it never
applied a join that a poll had left in flight), and its consumer created a missing topic
itself with the broker's defaults (one partition)."""

from __future__ import annotations

import time

import pytest

from segstream.kafka_client import Consumer, KafkaClients, TopicPartition, TopicSpec
from tests.helpers import both_kafka_clients, wait_until

pytestmark = pytest.mark.integration
PARTITIONS = 3
RECORDS = 30
ROUNDS = 5  # kafka-python stalled in about 9 rounds of 10 at 1 ms polls
POLL_MS = 1


def _produce(kafka: KafkaClients, topic: str) -> set[bytes]:
    producer = kafka.producer()
    try:
        values = {f"{topic}-{i}".encode() for i in range(RECORDS)}
        for value in sorted(values):
            producer.send(topic, value, key=value)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    return values


def _read(consumer: Consumer, expected: set[bytes], topic: str) -> set[bytes]:
    got: set[bytes] = set()

    def all_read() -> bool:
        got.update(r.value or b"" for r in consumer.poll(POLL_MS, 500))
        return got >= expected

    wait_until(all_read, timeout_s=30, interval_s=0.0,
               what=f"the {len(expected)} records of {topic} (read {len(got)})")
    return got


def _all_partitions(topic: str) -> set[TopicPartition]:
    return {TopicPartition(topic, p) for p in range(PARTITIONS)}


@both_kafka_clients
def test_a_consumer_that_subscribes_right_after_creation_reads_every_record(
        kafka: KafkaClients, unique: str) -> None:
    admin = kafka.admin()
    topics = [f"{unique}.{n}" for n in range(ROUNDS)]
    try:
        for topic in topics:
            assert admin.create_topics([TopicSpec(topic, PARTITIONS, {})]) == [topic]
            sent = _produce(kafka, topic)  # before the consumer joins: read from earliest
            consumer = kafka.consumer(group_id=f"{topic}.group")
            try:
                consumer.subscribe([topic])
                assert _read(consumer, sent, topic) == sent
                assert consumer.assignment() == _all_partitions(topic)
            finally:
                consumer.close()
    finally:
        admin.delete_topics([t for t in topics if t in admin.list_topics()])
        admin.close()


@both_kafka_clients
def test_a_consumer_that_subscribes_before_the_topic_exists_reads_it_once_created(
        kafka: KafkaClients, unique: str) -> None:
    admin = kafka.admin()
    topics = [f"{unique}.{n}" for n in range(2)]
    try:
        for topic in topics:
            consumer = kafka.consumer(group_id=f"{topic}.group")
            try:
                consumer.subscribe([topic])
                joined = time.monotonic() + 2  # joins the group with nothing to assign
                while time.monotonic() < joined:
                    assert consumer.poll(POLL_MS, 500) == []
                assert consumer.assignment() == set()
                # the topics job's spec holds: the waiting consumer did not create it
                assert admin.create_topics([TopicSpec(topic, PARTITIONS, {})]) == [topic]
                sent = _produce(kafka, topic)
                assert _read(consumer, sent, topic) == sent
                assert consumer.assignment() == _all_partitions(topic)
                assert admin.describe([topic])[topic]["partitions"] == str(PARTITIONS)
            finally:
                consumer.close()
    finally:
        admin.delete_topics([t for t in topics if t in admin.list_topics()])
        admin.close()
