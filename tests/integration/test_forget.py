"""``segstream forget USER`` against the real Redis and Kafka: every key of the user, its
member-set entry, queue marks and model-state entries go; other users stay; the
compacted assignments topic gets the user's tombstone."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
import redis

from segstream.config import Settings
from segstream.kafka_client import TopicPartition, kafka_clients
from segstream.kafka_io import KafkaClients, ensure_topics, topic_specs
from segstream.keys import Keys
from segstream.segmentation import Observation, OnlineSegmenter
from segstream.segmentation.types import SegConfig
from segstream_services.cli import main as cli_main
from segstream_services.forget import forget_user
from segstream_services.segmenter import store
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
USER = unicodedata.normalize("NFC", "zoë-42")
OTHER = "other-7"


@pytest.fixture
def settings(infra: Settings, unique: str, kafka: KafkaClients,
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    s = infra.model_copy(deep=True)
    s.redis.key_prefix = unique
    s.topics.assignments = f"{unique}.assignments"
    s.topics.segments_partitions = 2
    admin = kafka.admin()
    ensure_topics(admin, [t for t in topic_specs(s.topics) if t.name == s.topics.assignments])
    admin.close()
    monkeypatch.setenv("SEGSTREAM_REDIS__KEY_PREFIX", unique)
    monkeypatch.setenv("SEGSTREAM_TOPICS__ASSIGNMENTS", s.topics.assignments)
    return s


def _populate(client: redis.Redis, keys: Keys, uid: str, sid: str) -> None:
    """Something under every per-user key, the member set, the queues."""
    for key in keys.user_keys(uid):
        client.hset(key, "x", "1")
    client.hset(keys.seg(uid), "segment_id", sid)
    client.zadd(keys.seg_members(sid), {uid: 0})
    for queue in (keys.dirty(), keys.claims(), keys.text_due()):
        client.zadd(queue, {uid: 1})
    client.hset(keys.claim_meta(), uid, "w:1|1")
    client.hset(keys.model_prev_ids(), uid, sid)


def _last_values(settings: Settings, topic: str) -> dict[str, bytes | None]:
    """The latest value per key on ``topic``, read from the start to the end offsets."""
    consumer = kafka_clients(settings.kafka).consumer(group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for(topic))]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        ends = consumer.end_offsets(tps)
        out: dict[str, bytes | None] = {}

        def drained() -> bool:
            for r in consumer.poll(timeout_ms=200, max_records=500):
                out[(r.key or b"").decode()] = r.value
            return all((consumer.position(tp) or 0) >= ends[tp] for tp in tps)

        wait_until(drained, 30, what=f"reading {topic}")
        return out
    finally:
        consumer.close()


def test_forget_removes_every_key_and_publishes_a_tombstone(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients,
        capsys: pytest.CaptureFixture[str]) -> None:
    keys = Keys(settings.redis.key_prefix)
    _populate(redis_conn, keys, USER, "s1")
    _populate(redis_conn, keys, OTHER, "s1")
    # the user waits in the cold-start buffer of the stored model (its vector is there)
    model = OnlineSegmenter(SegConfig(k=2, cold_start_factor=10))
    model.observe([Observation(u, np.ones(4)) for u in (USER, OTHER)], 1)
    assert USER in model.buffer
    redis_conn.hset(keys.seg_state(), mapping={"model": store.encode_model(model), "rev": 1})
    producer = kafka.producer()
    producer.send(settings.topics.assignments, key=USER.encode(),
                  value=json.dumps({"user_id": USER}).encode()).get(timeout=30)
    producer.close()

    decomposed = unicodedata.normalize("NFD", USER)  # the same user, spelled decomposed
    assert decomposed != USER
    assert cli_main(["forget", decomposed, "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["user_id"] == USER and done["segment_id"] == "s1" and done["model_state"]
    assert done["keys_deleted"] == len(keys.user_keys(USER))

    left = list(redis_conn.scan_iter(match=keys.features(USER).replace(":f", ":*")))
    assert left == []
    assert all(redis_conn.exists(k) for k in keys.user_keys(OTHER))
    assert [m.decode() for m in redis_conn.zrange(keys.seg_members("s1"), 0, -1)] == [OTHER]
    for queue in (keys.dirty(), keys.claims(), keys.text_due()):
        assert redis_conn.zscore(queue, USER) is None and redis_conn.zscore(queue, OTHER)
    assert not redis_conn.hexists(keys.claim_meta(), USER)
    assert not redis_conn.hexists(keys.model_prev_ids(), USER)
    stored, rev, _ = store.read_state(redis_conn, keys)
    assert stored is not None and rev == 2
    assert USER not in stored.buffer and OTHER in stored.buffer
    assert _last_values(settings, settings.topics.assignments)[USER] is None

    # forgetting again is harmless: nothing left to delete, another tombstone
    assert cli_main(["forget", USER]) == 0
    assert "0 keys deleted" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["", "   ", "a{b}", "tab\there"])
def test_forget_refuses_an_id_ingest_never_stores(settings: Settings, bad: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["forget", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segstream: user id") and err.count("\n") == 1


def test_forget_finishes_a_crashed_batch_first_so_the_user_stays_forgotten(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients) -> None:
    """A segmenter batch stored its state and outbox (a change for the user), then died
    before publishing: forget publishes that batch before the tombstone, so neither its
    replay nor the compacted topic brings the user back."""
    settings.topics.segments = f"{settings.redis.key_prefix}.segments"
    settings.topics.catalog = f"{settings.redis.key_prefix}.catalog"
    admin = kafka.admin()
    ensure_topics(admin, [t for t in topic_specs(settings.topics)
                          if t.name in (settings.topics.segments, settings.topics.catalog)])
    admin.close()
    keys = Keys(settings.redis.key_prefix)

    def dies(topic: str, records: list[tuple[str, dict[str, object]]]) -> None:
        raise RuntimeError("killed before publishing")

    crashed = store.SegmentStateWriter(redis_conn, keys, dies, settings.topics.segments,
                                       settings.topics.catalog, settings.topics.assignments)
    model = OnlineSegmenter(SegConfig(k=2, cold_start_factor=10))
    change = {"user_id": USER, "segment_id": "s1"}
    with pytest.raises(RuntimeError, match="killed"):
        crashed.commit(model, 1, changes=[(USER, change)],
                       users={USER: {"segment_id": "s1", "confidence": 1.0}}, texts={},
                       applied=[])
    assert redis_conn.hget(keys.seg_state(), store.OUTBOX) is not None

    done = forget_user(settings, USER, client=redis_conn)
    assert done.segment_id == "s1"  # the stored batch had put the user in s1
    assert redis_conn.hget(keys.seg_state(), store.OUTBOX) is None  # nothing left to replay
    assert not redis_conn.exists(keys.seg(USER))
    assert redis_conn.zscore(keys.seg_members("s1"), USER) is None
    assert json.loads(_last_values(settings, settings.topics.segments)[USER] or b"{}") == change
    assert _last_values(settings, settings.topics.assignments)[USER] is None  # tombstone last
