"""``segstream.client`` against the real segmenter, Redis and Kafka: typed reads, exact
member sets (against a recount from the users' hashes), subscriptions that commit on
acknowledgement, and a late subscriber that rebuilds the current state from the compacted
assignments topic after the change feed's records are gone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from segstream.client import SegmentClient
from segstream.client_models import ChangeRecord, UserSegment
from segstream.config import Settings
from segstream.encoding import text_hash
from segstream.kafka_client import KafkaClients, TopicPartition
from segstream.keys import Keys
from segstream.stream_entry import EmbeddedEntry
from segstream_services.cli import main as cli_main
from segstream_services.segmenter.audience import member_sets, recount, tombstone
from segstream_services.segmenter.service import SegmenterService
from tests.helpers import segmenter_settings, wait_until

pytestmark = pytest.mark.integration
DIM = 384
MODEL = "test-model@1"
CENTRES = np.random.default_rng(11).normal(size=(3, DIM))
TOPICS = ("guitars and amplifiers", "espresso and coffee grinders", "trail running shoes")


@pytest.fixture
def settings(infra: Settings, unique: str, kafka: KafkaClients) -> Settings:
    return segmenter_settings(infra, unique, kafka, half_life_points=500.0)


def feed(client: redis.Redis, keys: Keys, uid: str, mode: int, rng: np.random.Generator
         ) -> None:
    """What the encoder writes for one user: text, ``emb`` hash and a stream entry."""
    vec = CENTRES[mode] + 0.3 * rng.normal(size=DIM)
    text = f"Mostly {TOPICS[mode]}. Last 30 days: {rng.integers(5, 50)} views."
    now = int(time.time() * 1000)
    client.set(keys.text(uid), text)
    client.hset(keys.emb(uid), mapping={
        "vec": (vec / np.linalg.norm(vec)).astype("<f2").tobytes(), "model_version": MODEL,
        "text_hash": text_hash(text), "encoded_ms": now})
    entry = EmbeddedEntry(uid, MODEL, text_hash(text), now - 5, now)
    client.xadd(keys.embedded(), entry.to_fields())


@pytest.fixture
def segmenter(settings: Settings, kafka: KafkaClients) -> Iterator[SegmenterService]:
    svc = SegmenterService(settings, kafka=kafka, consumer="client-test")
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    yield svc
    svc.stop()
    thread.join(15)
    assert not thread.is_alive()


def stored(client: redis.Redis, keys: Keys, users: list[str]) -> dict[str, str | None]:
    got = [client.hget(keys.seg(u), "segment_id") for u in users]
    return {u: g.decode() if g else None for u, g in zip(users, got, strict=True)}


class Counting:
    """A Redis client that counts round trips (commands and pipeline executions)."""

    def __init__(self, inner: redis.Redis) -> None:
        self.inner, self.trips = inner, 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self.inner.pipeline(*args, **kwargs)
        execute = pipe.execute

        def counted(*a: Any, **k: Any) -> Any:
            self.trips += 1
            return execute(*a, **k)

        pipe.execute = counted
        return pipe

    def __getattr__(self, name: str) -> Any:
        self.trips += 1
        return getattr(self.inner, name)


def test_client_reads_typed_state_and_sets_stay_exact_through_moves(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients,
        segmenter: SegmenterService) -> None:
    keys, rng = Keys(settings.redis.key_prefix), np.random.default_rng(3)
    users = [f"u{i}" for i in range(60)]
    for i, uid in enumerate(users):
        feed(redis_conn, keys, uid, i % 3, rng)
    wait_until(lambda: all(stored(redis_conn, keys, users).values()), 90,
               what="every user assigned")
    client = SegmentClient(settings, redis_conn=redis_conn, kafka=kafka)

    # every first assignment is a change whose freshness the segmenter observed (after it
    # stored the batch it publishes, then observes: wait for the publish to finish)
    sample = segmenter.metrics.base.registry.get_sample_value
    wait_until(lambda: (sample("segstream_freshness_seconds_count") or 0) >= len(users), 30,
               what="freshness observed for every first assignment")
    assert 0 <= sample("segstream_freshness_seconds_sum") / sample(
        "segstream_freshness_seconds_count") < 60

    # get / get_many: typed, equal to the stored hashes, one round trip for many users
    truth = stored(redis_conn, keys, users)
    one = client.get("u7")
    assert isinstance(one, UserSegment) and one.segment_id == truth["u7"]
    assert one.tier_path[-1] == one.segment_id and one.label and one.updated_at
    assert one.model_version == MODEL and one.memberships[0].segment_id == one.segment_id
    assert client.get("nobody") is None
    counting = Counting(redis_conn)
    many = SegmentClient(settings, redis_conn=counting, kafka=kafka)  # type: ignore[arg-type]
    got = many.get_many([*users, "nobody"])
    assert counting.trips == 1
    assert list(got) == [*users, "nobody"] and got["nobody"] is None
    assert {u: g.segment_id for u, g in got.items() if g} == truth

    # the member sets equal a recount; members() pages through them exactly once
    assert member_sets(redis_conn, keys) == recount(redis_conn, keys)
    catalog = client.segments()
    fine = [s for s in catalog if s.tier == 2]
    assert sum(s.members for s in fine) == len(users)
    for s in fine:
        paged = list(client.iter_members(s.segment_id, page=7))
        assert len(paged) == len(set(paged)) == s.members
        assert set(paged) == {u for u, sid in truth.items() if sid == s.segment_id}
        assert s.label and s.tier_path[-1] == s.segment_id

    # move a third of the users to another mode: sets follow the hashes exactly
    moved = users[:20]
    for i, uid in enumerate(moved):
        feed(redis_conn, keys, uid, (i + 1) % 3, rng)
    wait_until(lambda: sum(a != b for a, b in zip(
        stored(redis_conn, keys, moved).values(), [truth[u] for u in moved],
        strict=True)) >= 10, 90, what="users moved")
    wait_until(lambda: redis_conn.xpending(keys.embedded(), settings.segmenter.group)[
        "pending"] == 0 and member_sets(redis_conn, keys) == recount(redis_conn, keys), 60,
        what="batches acknowledged and sets equal to the recount")
    assert sum(len(m) for m in member_sets(redis_conn, keys).values()) == len(users)


def test_subscribe_typed_commit_on_ack_and_late_rebuild_from_assignments(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients,
        segmenter: SegmenterService) -> None:
    keys, rng = Keys(settings.redis.key_prefix), np.random.default_rng(5)
    client = SegmentClient(settings, redis_conn=redis_conn, kafka=kafka)
    latest = client.subscribe("late-joiner", from_="latest")  # joined before any record
    users = [f"v{i}" for i in range(45)]
    for i, uid in enumerate(users):
        feed(redis_conn, keys, uid, i % 3, rng)

    with client.subscribe("rec-a", from_="earliest") as sub:
        first = []
        for change in sub:
            assert isinstance(change.record, ChangeRecord)
            assert change.record.user_id == change.user_id
            first.append(change)
            if len(first) == 20:
                break
        acked = first[-1]
        acked.ack()  # commits its partition up to and including this record
    from_latest = wait_until(lambda: latest.poll(1.0), 60, what="records after joining")
    assert all(isinstance(c.record, ChangeRecord) for c in from_latest)
    latest.close()

    # the group resumes after the acknowledged record; unacknowledged ones come again
    wait_until(lambda: all(stored(redis_conn, keys, users).values()), 90,
               what="every user assigned")
    covered = {c.user_id for c in first}
    resumed = []
    with client.subscribe("rec-a", from_="earliest") as sub:
        deadline = time.monotonic() + 30
        while covered != set(users) and time.monotonic() < deadline:
            for change in sub.poll(1.0):
                resumed.append((change.partition, change.offset))
                covered.add(change.user_id)
                change.ack()
    assert covered == set(users)
    on_acked = [off for p, off in resumed if p == acked.partition]
    assert not on_acked or min(on_acked) == acked.offset + 1
    assert len(resumed) == len(set(resumed))

    # the change feed's retention passes: its records are deleted; a new subscriber
    # rebuilds the exact current state from the compacted assignments topic instead
    move = users[:15]
    for i, uid in enumerate(move):
        feed(redis_conn, keys, uid, (i + 2) % 3, rng)
    wait_until(lambda: redis_conn.xpending(keys.embedded(), settings.segmenter.group)[
        "pending"] == 0 and redis_conn.xlen(keys.embedded()) > 0, 60, what="batches done")
    _expire_change_feed(kafka, settings.topics.segments)
    with client.subscribe("after-retention", from_="earliest") as sub:
        assert sub.poll(2.0) == []
    state = client.snapshot()
    truth = stored(redis_conn, keys, users)
    assert {u: a.segment_id for u, a in state.items()} == truth
    assert all(isinstance(a, ChangeRecord) for a in state.values())

    # forgetting a user: its tombstone removes it from the rebuilt state
    producer = kafka.producer()
    tombstone(producer, settings.topics.assignments, "v0")
    producer.close()
    assert "v0" not in client.snapshot() and len(client.snapshot()) == len(users) - 1


def _expire_change_feed(kafka: KafkaClients, topic: str) -> None:
    """What retention does to old records: delete everything up to the end offsets."""
    consumer = kafka.consumer(group_id=None)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for(topic)]
    ends = consumer.end_offsets(parts)
    consumer.close()
    admin = kafka.admin()
    admin.delete_records(ends)
    admin.close()


def test_user_command_shows_whether_the_vector_is_current_without_services(
        settings: Settings, redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    keys = Keys(settings.redis.key_prefix)
    monkeypatch.setenv("SEGSTREAM_REDIS__KEY_PREFIX", settings.redis.key_prefix)
    feed(redis_conn, keys, "w1", 0, np.random.default_rng(1))
    client = SegmentClient(settings, redis_conn=redis_conn)

    status = client.vector_status("w1")
    assert status.present and status.text_is_embedded and status.current
    assert status.model_version == MODEL and status.embedded_at is not None
    assert status.serving_model_version is None and status.model_is_serving is None

    redis_conn.hset(keys.model_registry(), "active_version", "newer-model@2")
    status = client.vector_status("w1")
    assert status.model_is_serving is False and not status.current

    redis_conn.hset(keys.model_registry(), "active_version", MODEL)
    redis_conn.set(keys.text("w1"), "Mostly camping now.")
    redis_conn.zadd(keys.dirty(), {"w1": time.time() * 1000})
    status = client.vector_status("w1")
    assert status.model_is_serving and not status.text_is_embedded
    assert status.queued_for_encoding and not status.current

    assert cli_main(["user", "w1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vector"]["model_version"] == MODEL
    assert report["vector"]["current"] is False and report["vector"]["queued_for_encoding"]
    assert not client.vector_status("nobody").present
