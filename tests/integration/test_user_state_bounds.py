"""Bounded per-user state on the real Redis: every key of a user expires
``redis.user_ttl_days`` after its last write or the user's last applied event (0: never),
and retired segments leave the segmenter's state after ``retired_retention_days``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from segstream.config import Settings
from segstream.events import Event
from segstream.feature_store import FeatureStore, PendingEvent
from segstream.features import Rfm, increments
from segstream.keys import Keys
from segstream.segmentation import Observation, OnlineSegmenter
from segstream.segmentation.types import SegConfig
from segstream_services.encoder.claims import ClaimQueue
from segstream_services.segmenter import store
from tests.unit.test_finetune import tiny_base  # noqa: F401 - the base model fixture

pytestmark = pytest.mark.integration
BASE_MS = 1_795_857_300_000
DAY_S = 86_400


def _settings(infra: Settings, unique: str, ttl_days: float) -> Settings:
    return infra.model_copy(update={"redis": infra.redis.model_copy(update={
        "key_prefix": unique, "user_ttl_days": ttl_days})})


def _event(uid: str, n: int) -> Event:
    return Event(event_id=f"{uid}-{n}", user_id=uid, ts_ms=BASE_MS + n * 1000,
                 type="purchase", item_id=f"item-{n}", category="music/guitars",
                 title=f"guitar {n}", price=10.0)


def _apply(fs: FeatureStore, uid: str, n: int, pipelined: bool) -> None:
    ev = _event(uid, n)
    pending = {uid: [PendingEvent(ev.event_id, increments(ev, fs.cfg), "topic", 0, n,
                                  ev.item_id, 1.0)]}
    res = fs.collect(fs.send_apply(pending)) if pipelined else fs.apply(pending)
    rfm = Rfm(first_event_ms=ev.ts_ms, last_active_ms=ev.ts_ms, frequency=n + 1,
              monetary=10.0)
    fs.store_texts([(uid, f"text {n}", True)], {uid: rfm})
    assert res[uid].statuses == "A"


def _ttls(client: redis.Redis, keys: Keys, uid: str) -> dict[str, int]:
    """TTL (s) of each existing key of the user (-1: none)."""
    return {k: int(client.ttl(k)) for k in keys.user_keys(uid) if client.exists(k)}


@pytest.mark.parametrize("pipelined", [False, True])
def test_an_applied_event_refreshes_the_ttl_of_every_key_of_the_user(
        infra: Settings, unique: str, pipelined: bool) -> None:
    settings = _settings(infra, unique, ttl_days=2)
    client = redis.Redis(host=infra.redis.host, port=infra.redis.port)
    fs, keys = FeatureStore(client, settings), Keys(unique)
    uid = "ttl-user"
    # keys other services wrote without a TTL (or before TTLs existed): every one of them
    for key in keys.user_keys(uid):
        if key not in fs.user_keys(uid)[:5]:  # the script's own keys have their types
            client.hset(key, "x", "1")
    _apply(fs, uid, 1, pipelined)
    ttls = _ttls(client, keys, uid)
    assert set(ttls) == set(keys.user_keys(uid))
    assert all(0 < t <= 2 * DAY_S for t in ttls.values()), ttls
    # a user seen only once: its keys are created with the TTL too
    _apply(fs, "fresh-user", 1, pipelined)
    fresh = _ttls(client, keys, "fresh-user")
    assert {keys.features("fresh-user"), keys.rfm("fresh-user"), keys.text("fresh-user"),
            keys.interest("fresh-user"), keys.dedup("fresh-user")} <= set(fresh)
    assert all(0 < t <= 2 * DAY_S for t in fresh.values()), fresh


def test_a_zero_ttl_leaves_the_keys_without_expiry(infra: Settings, unique: str) -> None:
    settings = _settings(infra, unique, ttl_days=0)
    client = redis.Redis(host=infra.redis.host, port=infra.redis.port)
    fs, keys = FeatureStore(client, settings), Keys(unique)
    _apply(fs, "u", 1, pipelined=False)
    ttls = _ttls(client, keys, "u")
    assert keys.features("u") in ttls and set(ttls.values()) == {-1}


def test_the_encoder_and_segmenter_write_their_keys_with_the_ttl(
        infra: Settings, unique: str) -> None:
    client = redis.Redis(host=infra.redis.host, port=infra.redis.port)
    keys = Keys(unique)
    queue = ClaimQueue(client, keys, "w1", user_ttl_s=3 * DAY_S)
    assert queue.write_embeddings(1, [("u", {"vec": b"\0\0", "model_version": "m"})]) == 0
    assert 0 < client.ttl(keys.emb("u")) <= 3 * DAY_S
    writer = store.SegmentStateWriter(client, keys, lambda topic, records: None, "s", "c",
                                      user_ttl_s=3 * DAY_S)
    writer.commit(OnlineSegmenter(SegConfig(k=2)), BASE_MS, changes=[],
                  users={"u": {"segment_id": "s1", "confidence": 1.0}},
                  texts={"u": "some text"}, applied=[])
    for key in (keys.seg("u"), keys.seg_text("u")):
        assert 0 < client.ttl(key) <= 3 * DAY_S


def _trained(k: int = 3) -> OnlineSegmenter:
    rng = np.random.default_rng(3)
    model = OnlineSegmenter(SegConfig(k=k, cold_start_factor=4, seed=0))
    centres = rng.normal(size=(k, 8))
    obs = [Observation(f"u{i}", centres[i % k] + 0.05 * rng.normal(size=8))
           for i in range(4 * k)]
    model.observe(obs, BASE_MS)
    assert model.trained
    return model


def test_retired_segments_are_pruned_after_the_retention_and_ids_never_reused() -> None:
    from segstream.records import catalog_entries
    from segstream.segmentation.types import Family, Segment
    from segstream_services.segmenter.retention import prune

    model = _trained()
    live = list(model.slot_ids)
    day = 86_400_000
    anchor = np.zeros(8)
    old = Segment("s90", anchor, BASE_MS - 90 * day, 1, "birth", retired_ms=BASE_MS - 40 * day)
    recent = Segment("s91", anchor, BASE_MS - 20 * day, 1, "birth",
                     retired_ms=BASE_MS - 5 * day)
    model.segments.update({"s90": old, "s91": recent})
    model.families["f90"] = Family("f90", {"s90"}, BASE_MS - 90 * day,
                                   retired_ms=BASE_MS - 40 * day)
    next(iter(f for f in model.families.values() if f.retired_ms is None)).members.add("s90")
    next_id = model.next_segment

    assert prune(model, BASE_MS, retention_days=0).ids == []  # 0: keep forever
    pruned = prune(model, BASE_MS, retention_days=30)
    assert pruned.segments == ["s90"] and pruned.families == ["f90"]
    assert "s90" not in model.segments and "s91" in model.segments
    assert all("s90" not in f.members for f in model.families.values())
    assert model.slot_ids == live and model.next_segment == next_id
    entries = catalog_entries(model, BASE_MS)  # still consistent after the prune
    assert "s90" not in entries and "f90" not in entries and "s91" in entries
    restored = OnlineSegmenter.from_dict(model.to_dict())
    assert set(restored.segments) == set(model.segments)


def test_rollout_writes_the_next_vectors_with_the_ttl(infra: Settings, unique: str,
                                                      tiny_base: Path) -> None:  # noqa: F811
    from segstream.encoding import Encoder
    from segstream_services.rollout.service import Rollout

    client = redis.Redis(host=infra.redis.host, port=infra.redis.port)
    keys = Keys(unique)
    client.set(keys.text("u"), "Mostly guitars and amplifiers.")
    two_views = infra.model_copy(update={"interest": infra.interest.model_copy(
        update={"view_weights": {"interest": 1.0, "text": 0.5}})})  # a text-only user
    rollout = Rollout(client, unique, lambda topic, records: None, "s", "c",
                      user_ttl_s=3 * DAY_S, settings=two_views)
    encoder = Encoder(tiny_base, device="cpu", dtype="float32")
    assert rollout.reembed(encoder, ["u"]) == 1
    assert 0 < client.ttl(keys.emb_next("u")) <= 3 * DAY_S
