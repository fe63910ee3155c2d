"""Offset watermarks belong to one incarnation of a topic: after the events topic is
deleted and created again (offsets restart at 0, a new topic id), known users' new events
are applied, not dropped as redeliveries of the old topic's records."""

from __future__ import annotations

import json
import time

import pytest

from segstream.config import Settings
from segstream.kafka_client import KafkaClientError, TopicPartition, TopicSpec, kafka_clients
from segstream_services.ingest.service import IngestService
from tests.helpers import create_event_topics, wait_until

pytestmark = pytest.mark.integration
USERS = ("ann", "bob")


def _settings(infra: Settings, unique: str) -> Settings:
    return infra.model_copy(update={
        "topics": infra.topics.model_copy(update={"events": f"{unique}.events",
                                                  "dlq": f"{unique}.dlq"}),
        "redis": infra.redis.model_copy(update={"key_prefix": unique}),
        "ingest": infra.ingest.model_copy(update={"group_id": f"{unique}.ingest",
                                                  "metrics_port": 0})})


def _produce(settings: Settings, tag: str, n: int) -> None:
    now = int(time.time() * 1000)
    producer = kafka_clients(settings.kafka).producer()
    futures = [producer.send(settings.topics.events, key=USERS[i % 2].encode(),
                             value=json.dumps({"event_id": f"{tag}-{i}",
                                               "user_id": USERS[i % 2], "ts": now - 1000 + i,
                                               "type": "view", "item_id": "i"}).encode())
               for i in range(n)]
    producer.flush(timeout=30)
    for f in futures:
        f.get(timeout=30)
    producer.close()


def _recreate(settings: Settings) -> None:
    admin = kafka_clients(settings.kafka).admin()
    try:
        admin.delete_topics([settings.topics.events])
        wait_until(lambda: settings.topics.events not in admin.list_topics(), 30,
                   what="topic deleted")
    finally:
        admin.close()

    def created() -> bool:
        admin = kafka_clients(settings.kafka).admin()
        try:  # the deletion may still be in progress: then it is not created yet
            admin.create_topics([TopicSpec(settings.topics.events, 1, {})])
            return settings.topics.events in admin.list_topics()
        except KafkaClientError:
            return False
        finally:
            admin.close()
    wait_until(created, 60, interval_s=0.5, what="topic created again")


def test_a_recreated_topic_is_not_mistaken_for_redeliveries(infra: Settings,
                                                            unique: str) -> None:
    settings = _settings(infra, unique)
    create_event_topics(settings, 1)
    _produce(settings, "old", 20)
    first = IngestService(settings).run(idle_exit_s=2)
    assert first.outcomes["applied"] == 20

    _recreate(settings)
    _produce(settings, "new", 10)  # offsets 0..9 again, all below the old watermarks
    second = IngestService(settings).run(idle_exit_s=2)
    assert second.outcomes["applied"] == 10
    assert second.outcomes["duplicate:redelivery"] == 0

    # the old watermarks still guard nothing new: a redelivery of the new topic is one
    service = IngestService(settings)
    service.redis.delete(*[k for k in service.redis.scan_iter(f"{unique}:u:*:d")])
    rewind = kafka_clients(settings.kafka).consumer(group_id=settings.ingest.group_id)
    rewind.assign([TopicPartition(settings.topics.events, 0)])  # every record again
    rewind.commit({TopicPartition(settings.topics.events, 0): 0})
    rewind.close()
    third = service.run(idle_exit_s=2)
    assert third.outcomes["duplicate:redelivery"] == 10 and third.outcomes["applied"] == 0
