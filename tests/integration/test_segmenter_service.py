"""The segmenter service against the real Kafka broker and Redis.

Vectors enter through the encoder's contract (``emb`` hash + ``embedded`` stream entry),
records are read back from the real topics and validated against the JSON Schemas.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import numpy as np
import pytest
import redis
from sklearn.metrics import adjusted_rand_score

from segstream.config import Settings
from segstream.errors import InfraError
from segstream.kafka_client import KafkaClients
from segstream.kafka_io import ensure_topics, topic_specs
from segstream.keys import Keys
from segstream.records import load_schema
from segstream_services.cli import main as cli_main
from segstream_services.segmenter import store
from segstream_services.segmenter.cli import catalog, user_segment_info
from segstream_services.segmenter.service import SegmenterService
from tests.helpers import both_kafka_clients, wait_until

pytestmark = pytest.mark.integration

DIM = 384
MODES = np.random.default_rng(42).normal(size=(3, DIM))
TOPICS = ("guitars and amplifiers", "espresso and coffee grinders", "trail running shoes")


@pytest.fixture
def settings(kafka_infra: Settings, unique: str, kafka: KafkaClients) -> Settings:
    s = kafka_infra.model_copy(deep=True)
    s.redis.key_prefix = unique
    s.topics.events, s.topics.dlq = f"{unique}.events", f"{unique}.dlq"
    s.topics.segments, s.topics.catalog = f"{unique}.segments", f"{unique}.catalog"
    s.topics.segments_partitions = 3
    s.segmenter = s.segmenter.model_copy(update={
        "k": 3, "cold_start_factor": 10, "metrics_port": 0, "block_ms": 50,
        "half_life_points": 500.0, "catalog_refresh_s": 3600.0, "refit_every": 10})
    admin = kafka.admin()
    ensure_topics(admin, topic_specs(s.topics))
    admin.close()
    return s


class Feeder:
    """Writes what the encoder would: the emb hash, the feature text, a stream entry."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.keys = Keys(settings.redis.key_prefix)
        self.rng = np.random.default_rng(7)
        self.vectors: dict[str, np.ndarray] = {}

    def user(self, uid: str, mode: int, text: str | None = None,
             vec: np.ndarray | None = None) -> None:
        if vec is None:
            vec = MODES[mode] + 0.3 * self.rng.normal(size=DIM)
            vec = vec / np.linalg.norm(vec)
        self.vectors[uid] = vec
        text = text or f"Last 30 days: 12 views. Mostly {TOPICS[mode]}. Active on evenings."
        th = hashlib.sha1(text.encode()).hexdigest()[:16]
        now = int(time.time() * 1000)
        self.r.set(self.keys.text(uid), text)
        self.r.hset(self.keys.emb(uid), mapping={
            "vec": vec.astype(np.float16).tobytes(), "model_version": "test-model@1",
            "text_hash": th, "encoded_ms": now})
        self.r.xadd(self.keys.embedded(), {"user_id": uid, "model_version": "test-model@1",
                                           "text_hash": th, "dirty_ms": now - 5,
                                           "encoded_ms": now})


class Topic:
    """Reads every record of a topic from the beginning, accumulating across calls."""

    def __init__(self, kafka: KafkaClients, name: str) -> None:
        self.consumer = kafka.consumer(name, group_id=None, consumer_timeout_ms=200)
        self.records: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        self.records.extend(json.loads(m.value or b"null") for m in self.consumer.poll(200, 500))
        return self.records

    def wait_for(self, n: int, what: str) -> list[dict[str, Any]]:
        return wait_until(lambda: len(self.poll()) >= n and self.records, 60, what=what)


def start(settings: Settings, kafka: KafkaClients, name: str) -> tuple[SegmenterService,
                                                                       threading.Thread]:
    svc = SegmenterService(settings, kafka=kafka, consumer=name)
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    return svc, thread


def stop(svc: SegmenterService, thread: threading.Thread) -> None:
    svc.stop()
    thread.join(15)
    assert not thread.is_alive()


def drained(client: redis.Redis, settings: Settings) -> bool:
    info = client.xinfo_groups(Keys(settings.redis.key_prefix).embedded())
    group = next(g for g in info if g["name"].decode() == settings.segmenter.group)
    return group["pending"] == 0 and group.get("lag", 0) == 0


@both_kafka_clients
def test_segments_published_valid_stable_across_restart_and_quiet_on_repeats(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients) -> None:
    change_schema = load_schema("segment_change")
    catalog_schema = load_schema("catalog_entry")
    feed = Feeder(redis_conn, settings)
    seg_topic = Topic(kafka, settings.topics.segments)
    cat_topic = Topic(kafka, settings.topics.catalog)
    truth = {f"u{i}": i % 3 for i in range(45)}

    svc, thread = start(settings, kafka, "seg-a")
    try:
        for uid, mode in truth.items():
            feed.user(uid, mode)
        first = seg_topic.wait_for(45, "first assignments of the cold-start users")
        assert len(first) == 45  # one record per user, none before the cold start
        for rec in first:
            jsonschema.validate(rec, change_schema)
            assert rec["previous_segment_id"] is None
            assert rec["explanation"]["reason"] == "first"
            assert rec["explanation"]["text_changes"] == {  # every sentence is new
                "added": ["Last 30 days: 12 views.",
                          f"Mostly {TOPICS[truth[rec['user_id']]]}.", "Active on evenings."],
                "removed": []}
        seg_of = {r["user_id"]: r["segment_id"] for r in first}
        assert adjusted_rand_score(list(truth.values()), [seg_of[u] for u in truth]) == 1.0
        ids_before = set(seg_of.values())

        # repeats: the same entry again, and the same embedding under a new text hash
        for uid in list(truth)[:6]:
            feed.user(uid, truth[uid], vec=feed.vectors[uid])
        wait_until(lambda: drained(redis_conn, settings), 30, what="repeats handled")
        assert svc.metrics.entries.labels("duplicate")._value.get() == 6
        for uid in list(truth)[:6]:
            feed.user(uid, truth[uid], vec=feed.vectors[uid],
                      text=f"Mostly {TOPICS[truth[uid]]}. Active on evenings and weekends.")
        wait_until(lambda: drained(redis_conn, settings), 30, what="new texts handled")
        info = user_segment_info(settings, redis_conn, "u0")
        assert info is not None and info["segment_id"] == seg_of["u0"]
        assert info["tier_path"][-1] == seg_of["u0"] and len(info["memberships"]) == 3
        assert b"segstream_segment_churn_ratio" in svc.metrics.base.exposition()
    finally:
        stop(svc, thread)

    svc2, thread2 = start(settings, kafka, "seg-b")  # a restart: state comes from Redis
    try:
        later = {f"v{i}": i % 3 for i in range(12)}
        for uid, mode in later.items():
            feed.user(uid, mode)
        records = seg_topic.wait_for(45 + 12, "assignments after the restart")
        assert len(records) == 57  # the repeats emitted nothing
        for rec in records[45:]:
            jsonschema.validate(rec, change_schema)
            assert rec["user_id"].startswith("v")
            assert rec["centroids_version"] > 1
        mode_to_seg = {truth[u]: s for u, s in seg_of.items()}
        assert {r["user_id"]: r["segment_id"] for r in records[45:]} == {
            u: mode_to_seg[m] for u, m in later.items()}  # same ids as before the restart

        feed.user("u0", 1)  # u0's interests change: guitars -> espresso
        moved = seg_topic.wait_for(58, "u0's move")[57]
        jsonschema.validate(moved, change_schema)
        assert moved["user_id"] == "u0" and moved["segment_id"] == mode_to_seg[1]
        assert moved["previous_segment_id"] == seg_of["u0"]
        why = moved["explanation"]
        assert why["reason"] == "moved" and why["distance_margin"] > 0
        assert why["previous_distance"] > why["distance"]
        assert why["text_changes"] == {"added": [f"Mostly {TOPICS[1]}."],
                                       "removed": [f"Mostly {TOPICS[0]}."]}
    finally:
        stop(svc2, thread2)

    cats = cat_topic.wait_for(3 + 1, "catalog entries")
    for rec in cats:
        jsonschema.validate(rec, catalog_schema)
    fine = [e for e in catalog(settings, redis_conn) if e["tier"] == 2]
    assert {e["segment_id"] for e in fine} == ids_before
    assert sum(e["size"] for e in fine) == 57  # u0 moved, still one user
    assert all(e["label"] != "unlabelled" and e["description"] for e in fine)
    labels = {e["segment_id"]: e["label"] for e in fine}
    assert "guitars" in labels[mode_to_seg[0]] or "amplifiers" in labels[mode_to_seg[0]]


def test_redelivered_batch_is_applied_once(settings: Settings, redis_conn: redis.Redis,
                                           kafka: KafkaClients) -> None:
    settings.segmenter.cold_start_factor = 2
    feed = Feeder(redis_conn, settings)
    for i in range(12):
        feed.user(f"u{i}", i % 3)
    svc = SegmenterService(settings, kafka=kafka, consumer="replay")
    svc.ensure_group()
    stream = Keys(settings.redis.key_prefix).embedded()
    raw = redis_conn.xreadgroup(settings.segmenter.group, "replay", {stream: ">"})[0][1]
    svc.handle(raw)
    version = svc.model.version
    for i in range(12):
        feed.user(f"w{i}", i % 3)
    raw2 = redis_conn.xreadgroup(settings.segmenter.group, "replay", {stream: ">"})[0][1]
    fresh = SegmenterService(settings, kafka=kafka, consumer="replay")  # after a crash
    fresh.handle(raw2)
    fresh.handle(raw2)  # delivered again (ack lost): the model must not learn it twice
    fresh.close()
    svc.close()
    model, _, _ = store.read_state(redis_conn, Keys(settings.redis.key_prefix))
    assert model is not None and model.version == version + 1
    assert fresh.metrics.entries.labels("applied-before")._value.get() == 12
    assert sum(model.segments[s].size for s in model.slot_ids) == 24


def test_trim_keeps_every_entry_the_group_has_not_acknowledged(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients) -> None:
    settings.segmenter.cold_start_factor = 2
    feed = Feeder(redis_conn, settings)
    svc = SegmenterService(settings, kafka=kafka, consumer="trim")
    svc.ensure_group()
    stream = Keys(settings.redis.key_prefix).embedded()
    group = settings.segmenter.group
    for i in range(12):
        feed.user(f"u{i}", i % 3)
    done = redis_conn.xreadgroup(group, "trim", {stream: ">"})[0][1]
    feed.user("late", 0)  # delivered while the segmenter was down: pending, not handled
    pending = redis_conn.xreadgroup(group, "trim", {stream: ">"})[0][1]
    feed.user("unread", 1)  # not delivered yet
    assert svc.trim() == 0  # nothing acknowledged yet
    svc.handle(done)  # handled and acknowledged, then trimmed
    assert svc.metrics.trimmed._value.get() == 12
    assert svc.trim() == 0  # only the acknowledged entries went
    left = [eid for eid, _ in redis_conn.xrange(stream)]
    assert left == [pending[0][0], redis_conn.xrevrange(stream, count=1)[0][0]]
    again = redis_conn.xreadgroup(group, "trim", {stream: "0"})[0][1]
    assert again == pending and again[0][1][b"user_id"] == b"late"  # intact, handled next
    svc.handle(again)
    assert svc.metrics.entries.labels("processed")._value.get() == 13
    assert svc.metrics.entries.labels("invalid")._value.get() == 0
    svc.close()


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """``cli_main`` points the root logger at the captured stderr: put it back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("keep_logging")
def test_segments_cli_and_sigterm(settings: Settings, redis_conn: redis.Redis,
                                  kafka: KafkaClients, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SEGSTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix,
           "SEGSTREAM_TOPICS__SEGMENTS": settings.topics.segments,
           "SEGSTREAM_TOPICS__CATALOG": settings.topics.catalog,
           "SEGSTREAM_SEGMENTER__K": "3", "SEGSTREAM_SEGMENTER__METRICS_PORT": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cli_main(["segments", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    proc = subprocess.Popen([sys.executable, "-m", "segstream_services.cli", "run",
                             "segmenter"], env={**os.environ, **env},
                            stderr=subprocess.PIPE, text=True)
    try:
        feed = Feeder(redis_conn, settings)
        for i in range(30):
            feed.user(f"u{i}", i % 3)
        keys = Keys(settings.redis.key_prefix)
        wait_until(lambda: redis_conn.hlen(keys.seg_catalog()) >= 3, 60, what="segmenter started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert cli_main(["segments", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(e["segment_id"] for e in rows if e["tier"] == 2) == ["s1", "s2", "s3"]
    assert all({"label", "size", "description", "tier_path"} <= set(e) for e in rows)


def test_two_consumers_share_the_stream_and_one_model(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients) -> None:
    settings.segmenter.batch_size = 8  # small batches: both consumers get work
    feed = Feeder(redis_conn, settings)
    seg_topic = Topic(kafka, settings.topics.segments)
    running = [start(settings, kafka, name) for name in ("seg-x", "seg-y")]
    try:
        truth = {f"u{i}": i % 3 for i in range(90)}
        for uid, mode in truth.items():
            feed.user(uid, mode)
        records = seg_topic.wait_for(90, "first assignments from two consumers")
        wait_until(lambda: drained(redis_conn, settings), 30, what="stream drained")
        more = {f"w{i}": i % 3 for i in range(60)}
        for uid, mode in more.items():
            feed.user(uid, mode)
        records = seg_topic.wait_for(150, "assignments of later users")
        wait_until(lambda: drained(redis_conn, settings), 30, what="stream drained")
    finally:
        for svc, thread in running:
            stop(svc, thread)
    assert len(records) == 150 and len({r["user_id"] for r in records}) == 150
    seg_of = {r["user_id"]: r["segment_id"] for r in records}
    everyone = {**truth, **more}
    assert adjusted_rand_score(list(everyone.values()), [seg_of[u] for u in everyone]) == 1.0
    done = [svc.metrics.entries.labels("processed")._value.get() for svc, _ in running]
    assert all(n > 0 for n in done) and sum(done) == 150  # split between them, none twice
    model, _, _ = store.read_state(redis_conn, Keys(settings.redis.key_prefix))
    assert model is not None and sum(model.segments[s].size for s in model.slot_ids) == 150


def test_a_writer_that_lost_its_lock_publishes_nothing_and_its_successor_publishes_all(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients) -> None:
    settings.segmenter.cold_start_factor = 2
    keys = Keys(settings.redis.key_prefix)
    feed = Feeder(redis_conn, settings)
    seg_topic = Topic(kafka, settings.topics.segments)
    for i in range(12):
        feed.user(f"u{i}", i % 3)
    svc = SegmenterService(settings, kafka=kafka, consumer="slow")
    svc.ensure_group()
    raw = redis_conn.xreadgroup(settings.segmenter.group, "slow", {keys.embedded(): ">"})[0][1]
    load = svc._refresh_model

    def lease_expires_and_another_writer_takes_it() -> None:
        load()
        redis_conn.set(keys.seg_lock(), b"another-writer", px=5_000)

    svc._refresh_model = lease_expires_and_another_writer_takes_it  # type: ignore[method-assign]
    with pytest.raises(InfraError, match="lost the segmenter model lock"):
        svc.handle(raw)
    svc.close()
    assert seg_topic.poll() == []  # no change went out that the segmenter did not store
    assert not any(redis_conn.exists(keys.seg(f"u{i}")) for i in range(12))
    redis_conn.delete(keys.seg_lock())

    successor, thread = start(settings, kafka, "slow")  # same consumer: re-reads its pending
    try:
        records = seg_topic.wait_for(12, "the replayed batch's records")
        wait_until(lambda: drained(redis_conn, settings), 30, what="stream drained")
    finally:
        stop(successor, thread)
    assert sorted(r["user_id"] for r in records) == sorted(f"u{i}" for i in range(12))
    for r in records:
        assert redis_conn.hget(keys.seg(r["user_id"]), "segment_id") == r["segment_id"].encode()
    assert redis_conn.hget(keys.seg_state(), store.OUTBOX) is None


def test_a_batch_stored_but_not_published_is_published_before_anything_newer(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients) -> None:
    settings.segmenter.cold_start_factor = 2
    keys = Keys(settings.redis.key_prefix)
    feed = Feeder(redis_conn, settings)
    seg_topic = Topic(kafka, settings.topics.segments)
    for i in range(12):
        feed.user(f"u{i}", i % 3)
    svc = SegmenterService(settings, kafka=kafka, consumer="dies")
    svc.ensure_group()
    raw = redis_conn.xreadgroup(settings.segmenter.group, "dies", {keys.embedded(): ">"})[0][1]

    def broker_gone(topic: str, records: list[Any]) -> None:
        if records:
            raise InfraError("Kafka did not acknowledge")

    svc.writer.publish = broker_gone  # the process dies between store (3) and publish (4)
    with pytest.raises(InfraError):
        svc.handle(raw)
    svc.close()
    assert redis_conn.hget(keys.seg_state(), store.OUTBOX) is not None  # stored, pending
    stored = {f"u{i}": redis_conn.hget(keys.seg(f"u{i}"), "segment_id") for i in range(12)}
    assert all(stored.values()) and seg_topic.poll() == []

    feed.user("u0", 1)  # a newer change for u0 arrives before the restart
    successor, thread = start(settings, kafka, "dies")
    try:
        wait_until(lambda: drained(redis_conn, settings), 60, what="stream drained")
        records = seg_topic.wait_for(13, "the stored batch's records, then u0's move")
    finally:
        stop(successor, thread)
    assert {r["user_id"] for r in records[:12]} == set(stored)  # the stored batch first
    assert records[12]["user_id"] == "u0" and records[12]["previous_segment_id"] == \
        stored["u0"].decode()
    last = {r["user_id"]: r["segment_id"] for r in records}
    for uid, sid in last.items():
        assert redis_conn.hget(keys.seg(uid), "segment_id") == sid.encode()
    assert redis_conn.hget(keys.seg_state(), store.OUTBOX) is None
