"""``segstream model rollout`` / ``rollback`` against the real Redis and Kafka.

Two real (tiny) encoder versions: a small BERT and the model ``segstream finetune`` makes
from it. Users get feature texts from the synthetic personas, old-version vectors and
segments; then the CLI rolls the fine-tuned model out and back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import redis

from segstream.config import Settings
from segstream.encoding import Encoder, vec_from_bytes, vec_to_bytes
from segstream.kafka_io import KafkaClients, ensure_topics, topic_specs
from segstream.keys import Keys
from segstream.offline import build_profiles
from segstream.records import load_schema
from segstream.segmentation import Observation, OnlineSegmenter, SegConfig
from segstream_services.cli import main
from segstream_services.encoder.service import EncoderWorker
from segstream_services.encoder.views import combine, view_dims
from segstream_services.rollout.registry import Registry
from segstream_services.rollout.service import Rollout
from segstream_services.segmenter import store
from segstream_services.segmenter.audience import member_sets, recount
from tests.unit.test_finetune import _run, tiny_base  # noqa: F401 - the base model fixture

pytestmark = pytest.mark.integration
USERS = 60


@pytest.fixture
def settings(infra: Settings, unique: str, kafka: KafkaClients, tiny_base: Path,  # noqa: F811
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    s = infra.model_copy(deep=True)
    s.redis.key_prefix = unique
    s.topics.segments, s.topics.catalog = f"{unique}.segments", f"{unique}.catalog"
    s.topics.assignments = f"{unique}.assignments"
    s.encoder = s.encoder.model_copy(update={"model_path": tiny_base, "dtype": "float32",
                                             "device": "cpu", "claim_batch": 1,
                                             "max_wait_ms": 0})
    # written for both views (users here have feature texts): the text view on
    s.interest = s.interest.model_copy(update={"view_weights": {"interest": 1.0, "text": 0.5}})
    admin = kafka.admin()
    ensure_topics(admin, topic_specs(s.topics))
    admin.close()
    for name, value in (("REDIS__KEY_PREFIX", unique), ("TOPICS__SEGMENTS", s.topics.segments),
                        ("TOPICS__CATALOG", s.topics.catalog),
                        ("TOPICS__ASSIGNMENTS", s.topics.assignments),
                        ("ENCODER__MODEL_PATH", str(tiny_base)),
                        ("ENCODER__DTYPE", "float32"), ("ENCODER__DEVICE", "cpu"),
                        ("INTEREST__VIEW_WEIGHTS", '{"interest": 1.0, "text": 0.5}')):
        monkeypatch.setenv(f"SEGSTREAM_{name}", value)
    return s


def _records(kafka: KafkaClients, topic: str) -> list[dict[str, Any]]:
    consumer = kafka.consumer(topic, group_id=None, consumer_timeout_ms=1500)
    out = [json.loads(m.value) for m in consumer]
    consumer.close()
    return out


def _seed(client: redis.Redis, settings: Settings, encoder: Encoder) -> dict[str, str]:
    """Texts, old-version vectors and segments for USERS synthetic users; their ids."""
    from segstream.events import event_from_dict
    from segstream.synthetic import SyntheticStream

    allowed = settings.events.allowed_types
    events = [event_from_dict(r, allowed)
              for r in SyntheticStream(users=USERS, days=14, seed=5).events()]
    profiles = build_profiles(events, settings.ingest)
    users = sorted(profiles)
    keys = Keys(settings.redis.key_prefix)
    weights = settings.interest.view_weights  # text-only users, combined as live workers do
    vecs = [combine({"text": v}, weights, view_dims(encoder))
            for v in encoder.encode([profiles[u].text for u in users])]
    model = OnlineSegmenter(SegConfig(k=4, seed=0))
    model.model_version = encoder.model_version
    got = model.fit([Observation(u, v, profiles[u].text) for u, v in
                     zip(users, vecs, strict=True)], 1)
    pipe = client.pipeline(transaction=False)
    for u, v in zip(users, vecs, strict=True):
        pipe.set(keys.text(u), profiles[u].text)
        pipe.hset(keys.emb(u), mapping={"vec": vec_to_bytes(v), "text_hash": "x",
                                                "model_version": encoder.model_version})
    for a in got:
        pipe.hset(keys.seg(a.key), mapping={"segment_id": a.segment_id,
                                           "model_version": encoder.model_version})
    pipe.hset(keys.seg_state(), mapping={"model": store.encode_model(model), "rev": 1})
    pipe.execute()
    return {a.key: a.segment_id for a in got}


def segment_live_vectors(client: redis.Redis, keys: Keys, vecs: dict[str, bytes],
                         model_version: str, k: int = 3) -> None:
    """Segments (k, seed 0) fitted on the users' stored vectors, written as the segmenter
    stores them: each user's segment and the model state."""
    seg = OnlineSegmenter(SegConfig(k=k, seed=0))
    seg.model_version = model_version
    got = seg.fit([Observation(u, vec_from_bytes(v)) for u, v in sorted(vecs.items())], 1)
    pipe = client.pipeline(transaction=False)
    for a in got:
        pipe.hset(keys.seg(a.key), mapping={"segment_id": a.segment_id,
                                           "model_version": model_version})
    pipe.hset(keys.seg_state(), mapping={"model": store.encode_model(seg), "rev": 1})
    pipe.execute()


def assert_live_worker_agrees(worker: EncoderWorker, encoder: Encoder, users: list[str]
                              ) -> None:
    """A live worker switched to ``encoder`` recomputes every user after a rollout and
    finds each vector as the rollout left it: nothing re-encoded, nothing rewritten."""
    from tests.integration.test_interest_path import drain

    client, keys = worker.client, worker.keys
    worker.swap_encoder(encoder)
    after = {u: client.hget(keys.emb(u), "vec") for u in users}
    worker.totals.clear()
    client.zadd(keys.dirty(), dict.fromkeys(users, 1))
    drain(worker)
    assert worker.totals["unchanged"] == len(users) and worker.totals["vector"] == 0
    assert worker.totals["texts_encoded"] == 0 and worker.totals["item_embedded"] == 0
    assert {u: client.hget(keys.emb(u), "vec") for u in users} == after


def test_rollout_and_rollback(settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients,
                              tiny_base: Path, tmp_path: Path,  # noqa: F811
                              capsys: pytest.CaptureFixture[str]) -> None:
    from segstream.events import event_from_dict
    from segstream.finetune import make_pairs
    from segstream.synthetic import SyntheticStream

    old = Encoder(tiny_base, device="cpu", dtype="float32")
    allowed = settings.events.allowed_types
    pairs = make_pairs([event_from_dict(r, allowed) for r in
                        SyntheticStream(users=48, days=14, seed=11).events()],
                       settings.ingest, pairs_per_user=2)
    new_dir = _run(tiny_base, tmp_path, pairs, min_delta=0.0, lr=3e-3).path
    new = Encoder(new_dir, device="cpu", dtype="float32")
    assert new.model_version != old.model_version
    before = _seed(redis_conn, settings, old)
    keys = Keys(settings.redis.key_prefix)
    worker = EncoderWorker(settings, encoder=old, client=redis_conn)

    # Background re-embedding leaves the live vectors and the segmenter alone, and a second
    # pass re-encodes only a user whose text changed meanwhile.
    rollout = Rollout(redis_conn, settings.redis.key_prefix, lambda *_: None, "-", "-")
    users = rollout.users()
    assert users == sorted(before)
    rollout.start(str(new_dir), new.model_version, str(tiny_base), old.model_version)
    assert rollout.reembed(new, users) > 0
    one = users[0]
    assert redis_conn.hget(keys.emb(one), "model_version").decode() == \
        old.model_version
    assert redis_conn.hget(keys.emb_next(one), "model_version").decode() == \
        new.model_version
    redis_conn.set(keys.text(one), "Last 30 days: 3 views. Mostly toys (100%).")
    assert rollout.reembed(new, users) == 1
    assert not worker.watcher.check(worker)  # not active yet: the old model keeps serving

    # Cutover through the CLI (reuses the shadow vectors, so nothing else is encoded).
    assert main(["model", "rollout", str(new_dir), "--settle", "0"]) == 0
    out = capsys.readouterr().out
    state = Registry(redis_conn, keys).read()
    assert state["active_version"] == new.model_version
    assert state["previous_version"] == old.model_version and state["phase"] == "active"
    share, bound = float(state["changed_share"]), float(state["bound_share"])
    assert f"({share:.1%})" in out and share <= bound
    after = {u: redis_conn.hget(keys.seg(u), "segment_id").decode() for u in users}
    moved = {u for u in users if after[u] != before[u]}
    assert round(len(moved) / len(users), 6) == share
    model, _, _ = store.read_state(redis_conn, keys)
    assert model is not None and model.model_version == new.model_version
    assert {redis_conn.hget(keys.emb(u), "model_version").decode()
            for u in users} == {new.model_version}
    assert {redis_conn.hget(keys.emb_prev(u), "model_version").decode()
            for u in users} == {old.model_version}
    changes = _records(kafka, settings.topics.segments)
    assert {r["user_id"] for r in changes} == moved  # subscribers see only real changes
    schema = load_schema("segment_change")
    for r in changes:
        jsonschema.validate(r, schema)
        assert r["model_version"] == new.model_version
        assert r["previous_segment_id"] == before[r["user_id"]]
    catalog = _records(kafka, settings.topics.catalog)
    assert catalog and all(c["model_version"] == new.model_version for c in catalog)
    assert member_sets(redis_conn, keys) == recount(redis_conn, keys)  # sets follow ids
    by_user = {r["user_id"]: r for r in _records(kafka, settings.topics.assignments)}
    assert by_user == {r["user_id"]: r for r in changes}  # current state: the same records

    # The encoder worker switches to the new model without a restart and serves it.
    worker.watcher._at = 0.0
    assert worker.watcher.check(worker) and worker.encoder.model_version == new.model_version
    redis_conn.zadd(keys.dirty(), {users[1]: 1})
    worker.step()
    assert redis_conn.hget(keys.emb(users[1]), "model_version").decode() == \
        new.model_version
    # A late write by a worker still on the old model is queued again for re-encoding.
    redis_conn.hset(keys.emb(users[2]), "model_version", old.model_version)
    assert rollout.remark_stale(users, new.model_version, 0) == 1
    assert redis_conn.zscore(keys.dirty(), users[2]) is not None

    # Rollback: the previous version, vectors and every user's previous segment id return.
    assert main(["model", "rollback", "--settle", "0"]) == 0
    state = Registry(redis_conn, keys).read()
    assert state["active_version"] == old.model_version
    assert state["previous_version"] == new.model_version
    back = {u: redis_conn.hget(keys.seg(u), "segment_id").decode() for u in users}
    assert back == before
    assert member_sets(redis_conn, keys) == recount(redis_conn, keys)
    model, _, _ = store.read_state(redis_conn, keys)
    assert model is not None and model.model_version == old.model_version
    assert redis_conn.hget(keys.emb(users[5]), "model_version").decode() == \
        old.model_version
    records = _records(kafka, settings.topics.segments)
    back_records = [r for r in records if r["model_version"] == old.model_version]
    assert len(records) == len(changes) + len(back_records)
    assert {r["user_id"] for r in back_records} == moved  # exactly the users that moved
    worker.watcher._at = 0.0
    assert worker.watcher.check(worker) and worker.encoder.model_version == old.model_version

    # A second rollback undoes the first: the fine-tuned version and its ids are back.
    assert main(["model", "rollback", "--settle", "0"]) == 0
    state = Registry(redis_conn, keys).read()
    assert state["active_version"] == new.model_version
    again = {u: redis_conn.hget(keys.seg(u), "segment_id").decode() for u in users}
    assert sum(again[u] != after[u] for u in users) <= 1  # users[1] was re-encoded since
    assert redis_conn.hget(keys.emb(users[5]), "model_version").decode() == \
        new.model_version
    assert np.isfinite(share)


def test_rollout_builds_the_vectors_live_workers_build(
        settings: Settings, redis_conn: redis.Redis, tiny_base: Path,  # noqa: F811
        tmp_path: Path) -> None:
    """Interest-path users (events through ingest, items with titles and categories): after
    a rollout each user's vector is the combination of views a live worker computes under
    the new model — recounted here from the new model's item and text embeddings — with
    the live dimension, and a live worker on the new model finds every vector unchanged."""
    from segstream.events import event_from_dict
    from segstream.feature_store import FeatureStore
    from segstream.finetune import make_pairs
    from segstream.interest import item_text
    from segstream.synthetic import SyntheticStream
    from segstream_services.encoder.items import read_center
    from segstream_services.encoder.views import active_views, interest_vector
    from tests.helpers import create_event_topics
    from tests.integration.test_interest_path import drain, ingest, synthetic_events

    s = settings.model_copy(deep=True)
    unique = s.redis.key_prefix
    s.topics.events, s.topics.dlq = f"{unique}.events", f"{unique}.dlq"
    s.ingest = s.ingest.model_copy(update={"group_id": f"{unique}.ingest", "metrics_port": 0})
    s.encoder = s.encoder.model_copy(update={"metrics_port": 0})
    s.interest = s.interest.model_copy(update={  # both views, the catalogue centre on
        "view_weights": {"interest": 1.0, "text": 0.5}, "center_items": True})
    weights = s.interest.view_weights
    create_event_topics(s, 1)
    events = synthetic_events(24, seed=7)
    ingest(s, events)
    old = Encoder(tiny_base, device="cpu", dtype="float32")
    allowed = s.events.allowed_types
    pairs = make_pairs([event_from_dict(r, allowed) for r in
                        SyntheticStream(users=48, days=14, seed=11).events()],
                       s.ingest, pairs_per_user=2)
    new = Encoder(_run(tiny_base, tmp_path, pairs, min_delta=0.0, lr=3e-3).path,
                  device="cpu", dtype="float32")
    assert new.model_version != old.model_version
    keys = Keys(unique)
    worker = EncoderWorker(s, encoder=old, client=redis_conn)
    drain(worker)  # live vectors under the old model
    users = sorted({e["user_id"] for e in events})
    live_dim = len(active_views(weights)) * old.dim
    old_vecs = {u: redis_conn.hget(keys.emb(u), "vec") for u in users}
    assert all(len(vec_from_bytes(v)) == live_dim for v in old_vecs.values() if v)
    segment_live_vectors(redis_conn, keys, old_vecs, old.model_version)

    rollout = Rollout(redis_conn, unique, lambda *_: None, "-", "-", settings=s)
    rollout.start("new", new.model_version, str(tiny_base), old.model_version)
    assert rollout.reembed(new, rollout.users()) > 0
    rollout.cutover(rollout.users())

    # The recount: the new model's item vectors (embedded from the items' texts), the
    # interest view over the user's state, the text view, combined with the view weights.
    state = FeatureStore(redis_conn, s)
    center = read_center(redis_conn, keys, new.model_version)
    assert center is not None
    items = sorted({i for u in users for i in state.read_interest(u)})
    texts = [item_text(*(f.decode() if f else None for f in redis_conn.hmget(
        keys.item(i), ["title", "category", "description"])), s.interest.item_text_chars)
        for i in items]
    assert all(t is not None for t in texts)
    item_vecs = {}
    for i, fresh in zip(items, new.encode([t or "" for t in texts]), strict=True):
        stored = vec_from_bytes(redis_conn.get(keys.item_vec(new.model_version, i)))
        assert np.allclose(stored, fresh, atol=2e-3), i
        item_vecs[i] = stored / np.linalg.norm(stored)
    for uid in users:
        emb = redis_conn.hgetall(keys.emb(uid))
        assert emb[b"model_version"] == new.model_version.encode()
        text = redis_conn.get(keys.text(uid)).decode()
        iv, outcome, _ = interest_vector(state.read_interest(uid), item_vecs, center)
        assert outcome == "ok"
        expected = combine({"interest": iv, "text": new.encode([text])[0]}, weights,
                           view_dims(new))
        vec = vec_from_bytes(emb[b"vec"])
        assert expected is not None and vec.shape == (live_dim,)
        assert np.allclose(vec, expected, atol=3e-3), uid
        assert redis_conn.hget(keys.emb_prev(uid), "vec") == old_vecs[uid]

    # A live worker on the new model recomputes every user: nothing changes.
    assert_live_worker_agrees(worker, new, users)

    # Rollback swaps the vectors back: the old model's live vectors return.
    rollout.rollback()
    assert {u: redis_conn.hget(keys.emb(u), "vec") for u in users} == old_vecs
