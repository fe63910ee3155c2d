"""segstream on a real 3-master Redis Cluster (local redis-server processes in cluster
mode): every key a script or multi-key command touches together hashes to one slot, and
the ingest exactness test and the 2 + 2 scale-out test pass unchanged on the cluster (a
cluster client refuses cross-slot scripts, pipelines and transactions, and each node
refuses a script that reaches a key outside its slots)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from segstream.config import Settings
from segstream.feature_store import FeatureStore
from segstream.keys import Keys
from segstream.redis_io import check_redis, redis_client
from segstream_services.dev.local_redis_cluster import LocalRedisCluster
from segstream_services.encoder.claims import ClaimQueue
from tests.integration import test_ingest as ingest_tests
from tests.integration import test_scale_out as scale_tests

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_infra(infra: Settings) -> Iterator[Settings]:
    """The session's Kafka with a fresh local 3-master Redis Cluster instead of Redis."""
    with LocalRedisCluster(masters=3) as cluster:
        redis_settings = infra.redis.model_copy(update={
            "host": cluster.host, "port": cluster.port, "cluster": True})
        yield infra.model_copy(update={"redis": redis_settings})


def slots(keys: list[str]) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


def test_the_client_is_a_cluster_client_spanning_three_masters(
        cluster_infra: Settings) -> None:
    client = redis_client(cluster_infra.redis)
    check_redis(client)
    assert isinstance(client, RedisCluster)
    assert len(client.get_primaries()) == 3
    client.close()


def test_keys_used_together_share_one_slot(cluster_infra: Settings, unique: str) -> None:
    """The key lists the services hand to each script and transaction, taken from their
    own code, hash to one slot each (and different users spread over slots)."""
    client = redis_client(cluster_infra.redis)
    settings = cluster_infra.model_copy(update={
        "redis": cluster_infra.redis.model_copy(update={"key_prefix": unique})})
    keys = Keys(unique)
    store = FeatureStore(client, settings)
    queue = ClaimQueue(client, keys, "w1")
    users = [f"user-{n}" for n in range(50)] + ["ü-ñ", "a:b", "x y"]
    for uid in users:  # the ingest script; the rollout's per-user vector rotation
        assert len(slots(store.user_keys(uid))) == 1, uid
        assert len(slots([keys.emb(uid), keys.emb_next(uid), keys.emb_prev(uid),
                          keys.emb_swap(uid), keys.seg(uid), keys.seg_text(uid),
                          keys.rfm(uid)])) == 1, uid
    assert len(slots([store.user_keys(u)[0] for u in users])) > 10  # users spread out
    # the claim script, the complete script (claims, meta, stream) and the queue depth
    assert len(slots([*queue._queue_keys, keys.embedded()])) == 1
    # the segmenter's state, catalog, lease and member sets (rebuilt in one MULTI)
    assert len(slots([keys.seg_state(), keys.seg_catalog(), keys.seg_lock(),
                      *(keys.seg_members(f"s{n}") for n in range(20))])) == 1
    client.close()


def test_ingest_exactness_on_redis_cluster(cluster_infra: Settings, unique: str) -> None:
    ingest_tests.test_generated_stream_gives_exact_features(cluster_infra, unique)


def test_two_plus_two_scale_out_on_redis_cluster(cluster_infra: Settings, unique: str,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the ``segstream run`` subprocesses read their Redis settings from the environment
    monkeypatch.setenv("SEGSTREAM_REDIS__HOST", cluster_infra.redis.host)
    monkeypatch.setenv("SEGSTREAM_REDIS__PORT", str(cluster_infra.redis.port))
    monkeypatch.setenv("SEGSTREAM_REDIS__CLUSTER", "true")
    fleets: list[scale_tests.Fleet] = []
    try:
        scale_tests.test_two_plus_two_with_sigkill_equals_one_plus_one(
            cluster_infra, unique, tmp_path, fleets)
    finally:
        for fleet in fleets:
            fleet.kill_all()
