"""Faults against the real broker and Redis: a stopped segmenter, a lost consumer group,
and Redis losing its data. Waits are deadlines (``wait_until``), never sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis
import torch

from segstream.config import Settings
from segstream.encoding import Encoder
from segstream.errors import InfraError
from segstream.kafka_io import KafkaClients, ensure_topics, topic_specs
from segstream.keys import Keys
from segstream_services.encoder.claims import Claim
from segstream_services.encoder.service import EncoderWorker
from segstream_services.segmenter import audience
from segstream_services.segmenter.service import SegmenterService
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
CATS = ("electronics", "books", "garden", "music", "toys", "sports")


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.set_num_threads(2)
    return Encoder()


@pytest.fixture
def settings(infra: Settings, unique: str, kafka: KafkaClients) -> Settings:
    s = infra.model_copy(deep=True)
    s.redis.key_prefix = unique
    for name in ("events", "dlq", "segments", "catalog", "assignments"):
        setattr(s.topics, name, f"{unique}.{name}")
    s.topics.segments_partitions = 3
    s.segmenter = s.segmenter.model_copy(update={
        "k": 3, "cold_start_factor": 10, "metrics_port": 0, "block_ms": 50,
        "catalog_refresh_s": 3600.0, "refit_every": 0})
    s.encoder = s.encoder.model_copy(update={"metrics_port": 0, "max_wait_ms": 0})
    admin = kafka.admin()
    ensure_topics(admin, topic_specs(s.topics))
    admin.close()
    return s


@pytest.fixture
def running() -> Iterator[list[tuple[SegmenterService, threading.Thread]]]:
    started: list[tuple[SegmenterService, threading.Thread]] = []
    yield started
    for svc, thread in started:
        svc.stop()
        thread.join(15)


def start_segmenter(settings: Settings, kafka: KafkaClients, name: str,
                    started: list[tuple[SegmenterService, threading.Thread]]
                    ) -> SegmenterService:
    svc = SegmenterService(settings, kafka=kafka, consumer=name)
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    started.append((svc, thread))
    return svc


def mark(client: redis.Redis, keys: Keys, users: dict[str, str]) -> None:
    """Texts and dirty marks, as ingest writes them."""
    now = time.time_ns() // 1_000_000
    pipe = client.pipeline(transaction=False)
    for uid, text in users.items():
        pipe.set(keys.text(uid), text)
        pipe.zadd(keys.dirty(), {uid: now}, nx=True)
    pipe.execute()


def test_a_stopped_segmenter_makes_the_encoder_wait_and_loses_nothing(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients, encoder: Encoder,
        running: list[tuple[SegmenterService, threading.Thread]]) -> None:
    settings.encoder.stream_maxlen = 1_000
    settings.encoder.claim_batch = 128
    keys = Keys(settings.redis.key_prefix)
    SegmenterService(settings, kafka=kafka, consumer="down").ensure_group()  # then "down"
    users = {f"u{i}": f"Mostly {CATS[i % 6]} ({40 + i % 30}%)." for i in range(1_500)}
    mark(redis_conn, keys, users)
    worker = EncoderWorker(settings, encoder=encoder, client=redis_conn)

    def held_back() -> bool:
        worker.step()
        return worker.metrics.backpressure._value.get() == 1

    wait_until(held_back, 120, interval_s=0.0, what="the encoder to stop at the bound")
    in_stream = redis_conn.xlen(keys.embedded())
    assert 1_000 <= in_stream < 1_000 + 128  # stopped at the bound, nothing trimmed
    assert in_stream + redis_conn.zcard(keys.dirty()) == 1_500  # the rest wait in dirty
    worker._stream_at = 0.0  # look again now
    held = worker.step()
    assert isinstance(held, Claim) and not held.users  # still held back
    assert redis_conn.xlen(keys.embedded()) == in_stream

    segmenter = start_segmenter(settings, kafka, "up", running)  # the segmenter returns

    def everyone_assigned() -> bool:
        worker.step()
        return sum(map(len, audience.recount(redis_conn, keys).values())) == 1_500

    wait_until(everyone_assigned, 240, interval_s=0.0, what="every user assigned")
    assert worker.metrics.backpressure._value.get() == 0
    assert segmenter.metrics.entries.labels("invalid")._value.get() == 0
    assert segmenter.metrics.trimmed._value.get() >= 1_000  # acknowledged ones only


def test_a_vanished_consumer_group_is_recreated_not_looped_on(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients,
        running: list[tuple[SegmenterService, threading.Thread]]) -> None:
    keys = Keys(settings.redis.key_prefix)
    rng = np.random.default_rng(3)
    modes = rng.normal(size=(3, 384))

    def feed(uid: str, mode: int) -> None:
        vec = modes[mode] + 0.3 * rng.normal(size=384)
        now = int(time.time() * 1000)
        redis_conn.set(keys.text(uid), f"Mostly {CATS[mode]}.")
        redis_conn.hset(keys.emb(uid), mapping={
            "vec": (vec / np.linalg.norm(vec)).astype(np.float16).tobytes(),
            "model_version": "m@1", "text_hash": f"h{uid}", "encoded_ms": now})
        redis_conn.xadd(keys.embedded(), {"user_id": uid, "model_version": "m@1",
                                          "text_hash": f"h{uid}", "dirty_ms": now,
                                          "encoded_ms": now})

    svc = start_segmenter(settings, kafka, "seg", running)
    for i in range(30):
        feed(f"a{i}", i % 3)
    wait_until(lambda: svc.metrics.entries.labels("processed")._value.get() == 30, 60,
               what="the first users")
    redis_conn.delete(keys.embedded())  # the stream and its group are gone
    for i in range(9):
        feed(f"b{i}", i % 3)
    wait_until(lambda: svc.metrics.entries.labels("processed")._value.get() == 39, 30,
               what="users written after the group vanished")
    assert svc.metrics.group_recreated._value.get() >= 1
    wait_until(lambda: all(redis_conn.hget(keys.seg(f"b{i}"), "segment_id") for i in range(9)),
               30, what="their segments stored")


def test_after_redis_lost_the_state_segment_ids_continue_and_the_loss_is_raised(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients,
        running: list[tuple[SegmenterService, threading.Thread]]) -> None:
    from tests.integration.segment_state import delete_state

    keys = Keys(settings.redis.key_prefix)
    rng = np.random.default_rng(5)
    modes = rng.normal(size=(3, 384))

    def feed(uid: str, mode: int) -> None:
        vec = modes[mode] + 0.3 * rng.normal(size=384)
        now = int(time.time() * 1000)
        redis_conn.hset(keys.emb(uid), mapping={
            "vec": (vec / np.linalg.norm(vec)).astype(np.float16).tobytes(),
            "model_version": "m@1", "text_hash": f"h{uid}", "encoded_ms": now})
        redis_conn.xadd(keys.embedded(), {"user_id": uid, "model_version": "m@1",
                                          "text_hash": f"h{uid}", "dirty_ms": now,
                                          "encoded_ms": now})

    first = start_segmenter(settings, kafka, "before", running)
    for i in range(30):
        feed(f"a{i}", i % 3)
    wait_until(lambda: redis_conn.hlen(keys.seg_catalog()) >= 3, 60, what="first segments")
    before = {k.decode() for k in redis_conn.hkeys(keys.seg_catalog())}
    first.stop()
    running[0][1].join(15)
    delete_state(redis_conn, settings.redis.key_prefix)  # Redis comes back empty

    after = start_segmenter(settings, kafka, "after", running)
    for i in range(30):
        feed(f"b{i}", i % 3)
    wait_until(lambda: redis_conn.hlen(keys.seg_catalog()) >= 3, 60, what="new segments")
    now = {k.decode() for k in redis_conn.hkeys(keys.seg_catalog())}
    assert not now & before  # no id reused, no catalog entry overwritten
    high = max(int(s[1:]) for s in before if s.startswith("s"))
    assert min(int(s[1:]) for s in now if s.startswith("s")) == high + 1
    with pytest.raises(InfraError, match="Redis lost its data"):
        after.epoch.check()
    assert after.metrics.base.registry.get_sample_value("segstream_state_lost_total") == 1
