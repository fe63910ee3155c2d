"""Faults against the real broker and Redis: a stopped segmenter, a lost consumer group,
and Redis losing its data. Waits are deadlines (``wait_until``), never sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch

from segstream.config import Settings
from segstream.encoding import Encoder
from segstream.errors import InfraError
from segstream.kafka_client import KafkaClients
from segstream.keys import Keys
from segstream_services.encoder.claims import Claim
from segstream_services.encoder.service import EncoderWorker
from segstream_services.segmenter import audience
from segstream_services.segmenter.service import SegmenterService
from tests.helpers import segmenter_settings, wait_until

pytestmark = pytest.mark.integration
CATS = ("electronics", "books", "garden", "music", "toys", "sports")


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.set_num_threads(2)
    return Encoder()


@pytest.fixture
def settings(infra: Settings, unique: str, kafka: KafkaClients) -> Settings:
    s = segmenter_settings(infra, unique, kafka)
    s.encoder = s.encoder.model_copy(update={"metrics_port": 0, "max_wait_ms": 0})
    return s


@pytest.fixture
def running(service_threads: list[tuple[Any, threading.Thread]]
            ) -> list[tuple[Any, threading.Thread]]:
    return service_threads


def put_embedding(conn: redis.Redis, keys: Keys, uid: str, vec: np.ndarray,
                  text_hash: str) -> None:
    """What the encoder leaves for the segmenter: the user's unit vector (float16) and
    an entry on the embedded stream."""
    now = int(time.time() * 1000)
    conn.hset(keys.emb(uid), mapping={
        "vec": (vec / np.linalg.norm(vec)).astype(np.float16).tobytes(),
        "model_version": "m@1", "text_hash": text_hash, "encoded_ms": now})
    conn.xadd(keys.embedded(), {"user_id": uid, "model_version": "m@1",
                                "text_hash": text_hash, "dirty_ms": now, "encoded_ms": now})


def start_segmenter(settings: Settings, kafka: KafkaClients, name: str,
                    started: list[tuple[Any, threading.Thread]]
                    ) -> SegmenterService:
    svc = SegmenterService(settings, kafka=kafka, consumer=name)
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    started.append((svc, thread))
    return svc


def mark(client: redis.Redis, keys: Keys, users: dict[str, str]) -> None:
    """Texts, interest states (one item: the user's category) and dirty marks, as ingest
    writes them."""
    now = time.time_ns() // 1_000_000
    pipe = client.pipeline(transaction=False)
    for cat in CATS:
        pipe.hset(keys.item(cat), mapping={"title": f"{cat} item", "category": cat})
    for uid, text in users.items():
        pipe.set(keys.text(uid), text)
        pipe.zadd(keys.interest(uid), {next(c for c in CATS if c in text): 1.0})
        pipe.zadd(keys.dirty(), {uid: now}, nx=True)
    pipe.execute()


def test_a_stopped_segmenter_makes_the_encoder_wait_and_loses_nothing(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients, encoder: Encoder,
        running: list[tuple[Any, threading.Thread]]) -> None:
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
        running: list[tuple[Any, threading.Thread]]) -> None:
    keys = Keys(settings.redis.key_prefix)
    rng = np.random.default_rng(3)
    modes = rng.normal(size=(3, 384))

    def feed(uid: str, mode: int) -> None:
        redis_conn.set(keys.text(uid), f"Mostly {CATS[mode]}.")
        put_embedding(redis_conn, keys, uid, modes[mode] + 0.3 * rng.normal(size=384),
                      f"h{uid}")

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
        running: list[tuple[Any, threading.Thread]]) -> None:
    from tests.helpers import delete_prefix

    keys = Keys(settings.redis.key_prefix)
    rng = np.random.default_rng(5)
    modes = rng.normal(size=(3, 384))

    def feed(uid: str, mode: int) -> None:
        put_embedding(redis_conn, keys, uid, modes[mode] + 0.3 * rng.normal(size=384),
                      f"h{uid}")

    first = start_segmenter(settings, kafka, "before", running)
    for i in range(30):
        feed(f"a{i}", i % 3)
    wait_until(lambda: redis_conn.hlen(keys.seg_catalog()) >= 3, 60, what="first segments")
    before = {k.decode() for k in redis_conn.hkeys(keys.seg_catalog())}
    first.stop()
    running[0][1].join(15)
    delete_prefix(redis_conn, settings.redis.key_prefix)  # Redis comes back empty

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


def test_segmenter_killed_at_every_step_of_its_commit_order_loses_and_doubles_nothing(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients,
        running: list[tuple[Any, threading.Thread]], tmp_path: Path) -> None:
    """SIGKILL-equivalent exits (``SEGSTREAM_CRASH_AT``) at steps 1-7, twice each, of a
    segmenter process while a second consumer keeps running."""
    import json
    import os
    import subprocess
    import sys

    from segstream_services.segmenter import store

    settings.segmenter.batch_size = 4
    settings.segmenter.claim_idle_ms = 1_000
    keys = Keys(settings.redis.key_prefix)
    rng = np.random.default_rng(11)
    modes = rng.normal(size=(3, 384))
    mode_of: dict[str, int] = {}

    def feed(uid: str, mode: int) -> None:
        mode_of[uid] = mode
        put_embedding(redis_conn, keys, uid, modes[mode] + 0.3 * rng.normal(size=384),
                      f"h{uid}{time.time_ns()}")

    env = {**os.environ, "SEGSTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix,
           **{f"SEGSTREAM_TOPICS__{n.upper()}": getattr(settings.topics, n)
              for n in ("segments", "catalog", "assignments")},
           "SEGSTREAM_SEGMENTER__K": "3", "SEGSTREAM_SEGMENTER__METRICS_PORT": "0",
           "SEGSTREAM_SEGMENTER__BATCH_SIZE": "4", "SEGSTREAM_SEGMENTER__BLOCK_MS": "50",
           "SEGSTREAM_SEGMENTER__CLAIM_IDLE_MS": "1000",
           "SEGSTREAM_SEGMENTER__REFIT_EVERY": "0"}
    for i in range(30):
        feed(f"a{i}", i % 3)
    start_segmenter(settings, kafka, "steady", running)  # the second consumer, throughout
    kills, n = 0, 0
    for step in range(1, 8):
        for nth in (1, 2):
            log = tmp_path / f"crash-{step}-{nth}.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "segstream_services.cli", "run", "segmenter"],
                env={**env, "SEGSTREAM_CRASH_AT": f"segmenter:{step}@{nth}"},
                stdout=subprocess.DEVNULL, stderr=log.open("w"))
            try:
                def died(proc: subprocess.Popen[bytes] = proc) -> bool:
                    nonlocal n
                    n += 1
                    feed(f"n{n}", n % 3)
                    feed(f"a{n % 30}", (n + 1) % 3)  # interests change: moves
                    return proc.poll() is not None

                wait_until(died, 120, interval_s=0.2, what=f"the crash at step {step}@{nth}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 137, log.read_text()[-2000:]
            kills += 1
    assert kills == 14

    def settled() -> bool:
        info = redis_conn.xinfo_groups(keys.embedded())[0]
        return info["pending"] == 0 and info.get("lag", 0) == 0 and \
            redis_conn.hget(keys.seg_state(), store.OUTBOX) is None

    wait_until(settled, 120, what="the steady consumer to take over every pending entry")
    for svc, thread in running:
        svc.stop()
        thread.join(15)
    running.clear()

    last: dict[str, str] = {}
    consumer = kafka.consumer(settings.topics.segments, group_id=None,
                              consumer_timeout_ms=3000)
    for record in consumer:
        last[record.key.decode()] = json.loads(record.value)["segment_id"]
    consumer.close()
    stored = {uid: (redis_conn.hget(keys.seg(uid), "segment_id") or b"").decode()
              for uid in mode_of}
    assert {u: s for u, s in stored.items() if s} == last  # what subscribers hold = stored
    born: dict[str, set[str]] = {}
    consumer = kafka.consumer(settings.topics.catalog, group_id=None, consumer_timeout_ms=3000)
    for record in consumer:
        entry = json.loads(record.value)
        born.setdefault(entry["segment_id"], set()).add(entry["lineage"]["born_at"])
    consumer.close()
    assert born and all(len(b) == 1 for b in born.values())  # no id reused
    model, _, _ = store.read_state(redis_conn, keys)
    assert model is not None
    assert sum(model.segments[s].size for s in model.slot_ids) == len(last)  # none twice


def test_an_unloadable_rollout_model_keeps_the_encoder_serving_the_current_one(
        settings: Settings, redis_conn: redis.Redis, encoder: Encoder) -> None:
    from segstream_services.rollout.registry import Registry

    keys = Keys(settings.redis.key_prefix)
    worker = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    Registry(redis_conn, keys).set(active_version="other@9",  # an operator's local path
                                   active_path="/home/someone/models/other")
    assert worker.watcher.check(worker) is False
    assert worker.encoder is encoder
    assert worker.watcher.failure is not None and "cannot load model other@9" in \
        worker.watcher.failure
    assert worker.metrics.model_load_failures._value.get() == 1
    worker.watcher._at = 0.0
    assert worker.watcher.check(worker) is False  # not retried before retry_s
    assert worker.metrics.model_load_failures._value.get() == 1
    mark(redis_conn, keys, {f"u{i}": f"Mostly {CATS[i % 6]}." for i in range(6)})
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len({f[b"user_id"] for _, f in redis_conn.xrange(keys.embedded())})
                   == 6, 60, what="the queue served by the current model")
    finally:
        worker.stop()
        thread.join(15)
    versions = {f[b"model_version"] for _, f in redis_conn.xrange(keys.embedded())}
    assert versions == {encoder.model_version.encode()}
    assert worker.metrics.model_load_failures._value.get() == 1  # retried after retry_s


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A redis-server of this test's own (never the shared one), without persistence."""
    import shutil
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port",
                             str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        wait_until(lambda: _pings(client), 30, what="the private redis-server")
        yield client
    finally:
        client.close()
        proc.kill()
        proc.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_the_encoder_loop_survives_redis_out_of_memory(
        settings: Settings, private_redis: redis.Redis, encoder: Encoder) -> None:
    port = private_redis.connection_pool.connection_kwargs["port"]
    settings.redis.port = port
    keys = Keys(settings.redis.key_prefix)
    mark(private_redis, keys, {f"u{i}": f"Mostly {CATS[i % 6]}." for i in range(12)})
    private_redis.config_set("maxmemory-policy", "noeviction")
    private_redis.config_set("maxmemory", "1")  # every write is refused: OOM
    worker = EncoderWorker(settings, encoder=encoder)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: worker.metrics.redis_errors._value.get() >= 2, 30,
                   what="batches refused with OOM")
        assert thread.is_alive() and worker.problem is not None and "maxmemory" in worker.problem
        with pytest.raises(InfraError, match="maxmemory"):
            worker.health()
        private_redis.config_set("maxmemory", "0")  # memory freed
        wait_until(lambda: len({f[b"user_id"] for _, f in
                                private_redis.xrange(keys.embedded())}) == 12, 60,
                   what="the queue served after the OOM")
        wait_until(lambda: worker.problem is None, 30, what="the problem cleared")
        worker.health()
    finally:
        worker.stop()
        thread.join(15)
