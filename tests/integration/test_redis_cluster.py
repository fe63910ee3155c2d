"""segstream on a real 3-master Redis Cluster (local redis-server processes in cluster
mode): every key a script or multi-key command touches together hashes to one slot, the
ingest exactness test and the 2 + 2 scale-out test pass unchanged on the cluster, and two
segmenter consumers store and publish segments on it, finishing the outbox of a writer
that died between storing a batch and writing its users, also when ``segstream run
segmenter`` processes exit at the crash points around the outbox (a cluster client refuses
cross-slot scripts, pipelines and transactions, and each node refuses a script that
reaches a key outside its slots)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from segstream.config import Settings
from segstream.errors import InfraError
from segstream.feature_store import FeatureStore
from segstream.kafka_client import KafkaClients
from segstream.keys import Keys
from segstream.redis_io import check_redis, redis_client
from segstream_services.dev.local_redis_cluster import LocalRedisCluster
from segstream_services.encoder.claims import ClaimQueue
from segstream_services.segmenter import audience, store
from segstream_services.segmenter.service import SegmenterService
from tests.helpers import segmenter_settings, wait_until
from tests.integration import test_ingest as ingest_tests
from tests.integration import test_scale_out as scale_tests
from tests.integration.test_client import feed
from tests.integration.test_segmenter_service import Topic

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


def test_two_segmenters_on_redis_cluster_store_and_publish_the_same_segments(
        cluster_infra: Settings, unique: str, kafka: KafkaClients) -> None:
    """A writer dies after storing its batch in the segmenter's slot (step 3) and before
    writing its users (step 4); two consumers then finish its outbox and share the rest:
    every user's hash, member set and last published record agree, none counted twice."""
    settings = segmenter_settings(cluster_infra, unique, kafka, batch_size=8,
                                  cold_start_factor=2)
    client = redis_client(settings.redis)
    keys = Keys(unique)
    rng = np.random.default_rng(17)
    mode_of = {f"u{i}": i % 3 for i in range(12)}
    for uid, mode in mode_of.items():
        feed(client, keys, uid, mode, rng)
    segments = Topic(kafka, settings.topics.segments)
    dead = SegmenterService(settings, client=client, kafka=kafka, consumer="dies")
    dead.ensure_group()
    raw = client.xreadgroup(settings.segmenter.group, "dies", {keys.embedded(): ">"},
                            count=8)[0][1]

    def killed(box: dict[str, object]) -> None:
        raise InfraError("killed between storing the batch and writing its users")

    dead.writer._write_users = killed  # type: ignore[method-assign]
    with pytest.raises(InfraError, match="killed"):
        dead.handle(raw)
    dead.close()
    assert client.hget(keys.seg_state(), store.OUTBOX) is not None  # stored, not applied
    assert audience.member_sets(client, keys) and not audience.recount(client, keys)
    assert segments.poll() == []

    running = []
    for name in ("dies", "other"):  # "dies" re-reads its pending entries on restart
        svc = SegmenterService(settings, kafka=kafka, consumer=name)
        thread = threading.Thread(target=svc.run, daemon=True)
        thread.start()
        running.append((svc, thread))
    try:
        for i in range(12, 90):
            mode_of[f"u{i}"] = i % 3
            feed(client, keys, f"u{i}", i % 3, rng)
        for i in range(0, 12, 3):  # interests change: these users move
            mode_of[f"u{i}"] = (mode_of[f"u{i}"] + 1) % 3
            feed(client, keys, f"u{i}", mode_of[f"u{i}"], rng)

        def settled() -> bool:
            group = client.xinfo_groups(keys.embedded())[0]
            return group["pending"] == 0 and group.get("lag", 0) == 0 and \
                client.hget(keys.seg_state(), store.OUTBOX) is None

        wait_until(settled, 120, what="both consumers to drain the stream")
    finally:
        for svc, thread in running:
            svc.stop()
            thread.join(15)
    assert all(svc.metrics.entries.labels("processed")._value.get() > 0
               for svc, _ in running)
    assert_consistent(client, keys, segments, set(mode_of))
    client.close()


def assert_consistent(client: redis.Redis, keys: Keys, segments: Topic, users: set[str]
                      ) -> None:
    """Every user has a stored segment, the last record per user on the segments topic
    is that segment, the member sets equal the hashes, and the model counts each once."""
    stored = {u: (client.hget(keys.seg(u), "segment_id") or b"").decode() for u in users}
    assert all(stored.values())

    def last() -> dict[str, str]:
        return {r["user_id"]: r["segment_id"] for r in segments.poll()}

    wait_until(lambda: last() == stored, 60, what="the topic to catch up with the hashes")
    assert last() == stored  # subscribers hold what is stored
    assert audience.member_sets(client, keys) == audience.recount(client, keys)
    assert sum(map(len, audience.recount(client, keys).values())) == len(users)
    model, _, _ = store.read_state(client, keys)
    assert model is not None and model.trained
    assert sum(model.segments[s].size for s in model.slot_ids) == len(users)  # none twice


def test_segmenter_processes_killed_around_the_outbox_on_redis_cluster_lose_nothing(
        cluster_infra: Settings, unique: str, kafka: KafkaClients, tmp_path: Path) -> None:
    """``segstream run segmenter`` processes on the cluster exit at once
    (``SEGSTREAM_CRASH_AT``) after storing a batch (3), after writing its users (4) and
    after publishing it (5), while a second consumer keeps running."""
    settings = segmenter_settings(cluster_infra, unique, kafka, batch_size=4,
                                  claim_idle_ms=1_000)
    client = redis_client(settings.redis)
    keys = Keys(unique)
    rng = np.random.default_rng(23)
    users = {f"a{i}" for i in range(30)}
    for i in range(30):
        feed(client, keys, f"a{i}", i % 3, rng)
    segments = Topic(kafka, settings.topics.segments)
    env = {**os.environ, "SEGSTREAM_REDIS__HOST": settings.redis.host,
           "SEGSTREAM_REDIS__PORT": str(settings.redis.port),
           "SEGSTREAM_REDIS__CLUSTER": "true", "SEGSTREAM_REDIS__KEY_PREFIX": unique,
           "SEGSTREAM_KAFKA__CLIENT": settings.kafka.client,
           **{f"SEGSTREAM_TOPICS__{n.upper()}": getattr(settings.topics, n)
              for n in ("segments", "catalog", "assignments")},
           "SEGSTREAM_SEGMENTER__K": "3", "SEGSTREAM_SEGMENTER__METRICS_PORT": "0",
           "SEGSTREAM_SEGMENTER__BATCH_SIZE": "4", "SEGSTREAM_SEGMENTER__BLOCK_MS": "50",
           "SEGSTREAM_SEGMENTER__CLAIM_IDLE_MS": "1000",
           "SEGSTREAM_SEGMENTER__REFIT_EVERY": "0"}
    steady = SegmenterService(settings, kafka=kafka, consumer="steady")
    thread = threading.Thread(target=steady.run, daemon=True)
    thread.start()
    n = 0
    try:
        for step in (4, 5, 3):  # 4 first: the model is trained, batches make records
            log = tmp_path / f"crash-{step}.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "segstream_services.cli", "run", "segmenter"],
                env={**env, "SEGSTREAM_CRASH_AT": f"segmenter:{step}"},
                stdout=subprocess.DEVNULL, stderr=log.open("w"))
            try:
                def died(proc: subprocess.Popen[bytes] = proc) -> bool:
                    nonlocal n
                    n += 1
                    users.add(f"n{n}")
                    feed(client, keys, f"n{n}", n % 3, rng)
                    feed(client, keys, f"a{n % 30}", (n + 1) % 3, rng)  # moves
                    return proc.poll() is not None

                wait_until(died, 120, interval_s=0.2, what=f"the crash at step {step}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 137, log.read_text()[-2000:]

        def settled() -> bool:
            group = client.xinfo_groups(keys.embedded())[0]
            return group["pending"] == 0 and group.get("lag", 0) == 0 and \
                client.hget(keys.seg_state(), store.OUTBOX) is None

        wait_until(settled, 120, what="the steady consumer to take over every entry")
    finally:
        steady.stop()
        thread.join(15)
    assert_consistent(client, keys, segments, users)
    client.close()


def test_model_rollout_refuses_a_cluster_with_a_clear_error(cluster_infra: Settings,
                                                            unique: str) -> None:
    """Rollout's vector swap is one transaction across users' slots: on a cluster it stops
    before writing anything, with a ConfigError that says so (not a CROSSSLOT error)."""
    from segstream.errors import ConfigError
    from segstream_services.rollout.service import Rollout

    client = redis_client(cluster_infra.redis)
    try:
        with pytest.raises(ConfigError, match="does not run on a Redis Cluster"):
            Rollout(client, unique, lambda *_: None, f"{unique}.segments",
                    f"{unique}.catalog")
        assert not list(client.scan_iter(match=f"{unique}*"))
    finally:
        client.close()
