"""Dead letters on the real broker: a record near the broker's size limit is stored
truncated (with the original's size and SHA-256) instead of blocking ingest, and a dead
letter the broker refuses blocks only until it is taken, without re-sending the batch's
other dead letters, while ``/healthz`` fails its ``dlq`` check and a metric says so."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from segstream.config import Settings
from segstream.kafka_client import KafkaClientError, TopicSpec, kafka_clients
from segstream.kafka_io import describe
from segstream_services.ingest.dead_letters import DLQ_UNHEALTHY_AFTER
from segstream_services.ingest.service import IngestService
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
BIG = 1_200_000  # past the DLQ topic's default 1 MiB record limit


@pytest.fixture
def settings(infra: Settings, unique: str) -> Settings:
    s = infra.model_copy(update={
        "topics": infra.topics.model_copy(update={"events": f"{unique}.events",
                                                  "dlq": f"{unique}.dlq"}),
        "redis": infra.redis.model_copy(update={"key_prefix": unique}),
        "ingest": infra.ingest.model_copy(update={"group_id": f"{unique}.ingest",
                                                  "metrics_port": 0})})
    admin = kafka_clients(s.kafka).admin()
    try:  # the events topic takes records up to 2 MiB; the DLQ keeps the broker's default
        admin.create_topics([TopicSpec(s.topics.events, 1, {"max.message.bytes": str(2 << 20)}),
                             TopicSpec(s.topics.dlq, 1, {})])
        wait_until(lambda: len(describe(admin, [s.topics.events, s.topics.dlq])) == 2,
                   what="topics")
    finally:
        admin.close()
    return s


def _event(n: int) -> bytes:
    return json.dumps({"event_id": f"e{n}", "user_id": f"u{n % 3}",
                       "ts": int(time.time() * 1000) - n, "type": "view",
                       "item_id": "i"}).encode()


def _produce(settings: Settings, values: list[bytes]) -> None:
    producer = kafka_clients(settings.kafka).producer(max_request_size=3 << 20)
    futures = [producer.send(settings.topics.events, key=b"k", value=v) for v in values]
    producer.flush(timeout=60)
    for f in futures:
        f.get(timeout=30)
    producer.close()


def _dead_letters(settings: Settings, at_least: int) -> list[Any]:
    consumer = kafka_clients(settings.kafka).consumer(
        settings.topics.dlq, group_id=None, auto_offset_reset="earliest",
        fetch_max_bytes=4 << 20, max_partition_fetch_bytes=4 << 20)
    got: list[Any] = []
    try:
        def drain() -> bool:
            got.extend(consumer.poll(timeout_ms=300, max_records=100))
            return len(got) >= at_least
        wait_until(drain, 60, interval_s=0, what="dead letters")
        end = time.monotonic() + 2  # and nothing more arrives
        while time.monotonic() < end:
            got.extend(consumer.poll(timeout_ms=300, max_records=100))
    finally:
        consumer.close()
    return got


def _run(service: IngestService) -> threading.Thread:
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    return thread


def test_a_dead_letter_near_the_record_limit_is_stored_truncated(settings: Settings) -> None:
    big = b"\x00not json " + bytes(range(256)) * (BIG // 256)
    _produce(settings, [_event(1), big, _event(2)])
    service = IngestService(settings)
    thread = _run(service)
    try:
        letters = _dead_letters(settings, 1)
        wait_until(lambda: service.metrics.applied._value.get() == 2, 30, what="applied")
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert len(letters) == 1
    letter = letters[0]
    headers = {k: v.decode() for k, v in letter.headers}
    cap = settings.events.dlq_max_value_bytes
    assert headers["segstream.reason"] == "too_large"
    assert letter.value == big[:cap]
    assert int(headers["segstream.original.size"]) == len(big)
    assert headers["segstream.original.sha256"] == hashlib.sha256(big).hexdigest()
    assert letter.key == b"k" and "segstream.original.key_size" not in headers


class _Refusing:
    """The real producer, except that sends of one value fail ``times`` times first."""

    def __init__(self, inner: Any, refuse: bytes, times: int) -> None:
        self.inner, self.refuse, self.left = inner, refuse, times
        self.sent: Counter[bytes] = Counter()

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Any = None) -> Any:
        if value == self.refuse and self.left > 0:
            self.left -= 1
            raise KafkaClientError("injected: the broker refused the dead letter")
        self.sent[value or b""] += 1
        return self.inner.send(topic, value=value, key=key, headers=headers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_refused_dead_letter_blocks_unhealthy_and_sends_the_others_once(
        settings: Settings) -> None:
    bad = [b"not json %d" % i for i in range(3)]
    _produce(settings, [_event(1), *bad, _event(2)])
    clients = kafka_clients(settings.kafka)
    real_producer = clients.producer
    refusing: list[_Refusing] = []

    def producer(**options: Any) -> _Refusing:
        refusing.append(_Refusing(real_producer(**options), bad[1], DLQ_UNHEALTHY_AFTER + 1))
        return refusing[-1]

    clients.producer = producer  # type: ignore[method-assign]
    service = IngestService(settings, kafka=clients)
    thread = _run(service)
    try:
        wait_until(lambda: service.metrics.dlq_blocked._value.get() == 1, 60,
                   what="blocked on the refused dead letter")
        with pytest.raises(Exception, match="dead-letter produce failed"):
            service.dlq_check()
        assert service.metrics.applied._value.get() == 0  # the batch is not passed over
        letters = _dead_letters(settings, 3)
        wait_until(lambda: service.metrics.applied._value.get() == 2, 30, what="applied")
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert sorted(letter.value for letter in letters) == sorted(bad)  # each exactly once
    assert refusing[0].sent == Counter(bad)
    service.dlq_check()  # healthy again
    assert service.metrics.dlq_blocked._value.get() == 0
    assert service.metrics.dlq_failures._value.get() == DLQ_UNHEALTHY_AFTER + 1
    assert service.metrics.dead_lettered.labels(reason="not_json")._value.get() == 3
