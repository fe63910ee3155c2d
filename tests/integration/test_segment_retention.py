"""The running segmenter prunes retired segments past ``retired_retention_days`` from its
stored model state and the catalog hash; live segments and the id counter stay."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import redis

from segstream.config import Settings
from segstream.kafka_client import KafkaClients
from segstream.keys import Keys
from segstream.segmentation import Observation, OnlineSegmenter
from segstream.segmentation.types import Family, SegConfig, Segment
from segstream_services.segmenter import store
from segstream_services.segmenter.service import SegmenterService
from tests.helpers import segmenter_settings, wait_until
from tests.integration.test_client import CENTRES, DIM, MODEL, feed

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000


@pytest.fixture
def settings(infra: Settings, unique: str, kafka: KafkaClients) -> Settings:
    return segmenter_settings(infra, unique, kafka, partitions=1, retired_retention_days=30)


def test_the_segmenter_prunes_old_retired_segments(settings: Settings,
                                                   redis_conn: redis.Redis,
                                                   kafka: KafkaClients) -> None:
    keys = Keys(settings.redis.key_prefix)
    rng = np.random.default_rng(5)
    model = OnlineSegmenter(SegConfig.from_settings(settings.segmenter))
    model.model_version = MODEL
    now = int(time.time() * 1000)
    obs = []
    for i in range(30):
        v = CENTRES[i % 3] + 0.3 * rng.normal(size=DIM)
        obs.append(Observation(f"seed{i}", v / np.linalg.norm(v)))
    model.observe(obs, now)
    assert model.trained
    live = set(model.slot_ids)
    old_sid, new_sid = f"s{model.next_segment + 50}", f"s{model.next_segment + 51}"
    model.segments[old_sid] = Segment(old_sid, np.zeros(DIM), now - 90 * DAY_MS, 1, "birth",
                                      retired_ms=now - 40 * DAY_MS)
    model.segments[new_sid] = Segment(new_sid, np.zeros(DIM), now - 20 * DAY_MS, 1, "birth",
                                      retired_ms=now - 2 * DAY_MS)
    model.families["f90"] = Family("f90", {old_sid}, now - 90 * DAY_MS,
                                   retired_ms=now - 40 * DAY_MS)
    next_id = model.next_segment
    redis_conn.hset(keys.seg_state(), mapping={"model": store.encode_model(model), "rev": 1,
                                               "version": model.version})
    redis_conn.hset(keys.seg_catalog(), mapping={
        sid: json.dumps({"segment_id": sid}) for sid in (old_sid, new_sid, "f90")})

    svc = SegmenterService(settings, kafka=kafka, consumer="retention-test")
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        for i in range(5):
            feed(redis_conn, keys, f"user{i}", i % 3, rng)
        wait_until(lambda: redis_conn.xlen(keys.embedded()) > 0 and redis_conn.xpending(
            keys.embedded(), settings.segmenter.group)["pending"] == 0
            and store.read_rev(redis_conn, keys) > 1, 60, what="a batch stored")
    finally:
        svc.stop()
        thread.join(30)
    stored, _, _ = store.read_state(redis_conn, keys)
    assert stored is not None
    assert old_sid not in stored.segments and "f90" not in stored.families
    assert new_sid in stored.segments and live <= set(stored.segments)
    assert stored.next_segment >= next_id
    assert redis_conn.hget(keys.seg_catalog(), old_sid) is None
    assert redis_conn.hget(keys.seg_catalog(), "f90") is None
    assert redis_conn.hget(keys.seg_catalog(), new_sid) is not None
