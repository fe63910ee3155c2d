"""Crash-point matrix on the real broker, Redis and model: ``segstream run ingest`` and
``segstream run encoder`` processes end at every numbered step of their commit order
(``SEGSTREAM_CRASH_AT``: ``os._exit(137)``, what SIGKILL leaves), twice per step, while
events keep arriving and a second consumer of each service and a segmenter keep running.
(The segmenter's own steps are killed in ``test_faults``.)

Afterwards, end to end: features equal an independent recount of the produced events and
every malformed record has a dead letter (nothing lost, nothing counted twice); every
user's vector is the one of their final interest state; the last record per user on the
segments topic equals that user's stored segment, every vector is assigned exactly once
in the model, and no segment id is born twice. Waits are deadlines, never sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch

from segstream.config import Settings
from segstream.encoding import Encoder, vec_from_bytes
from segstream.kafka_client import KafkaClients
from segstream.kafka_io import ensure_topics, topic_specs
from segstream.keys import Keys
from segstream.synthetic import SyntheticStream
from segstream_services.encoder.service import EncoderWorker
from segstream_services.ingest.service import IngestService
from segstream_services.segmenter import store
from segstream_services.segmenter.service import SegmenterService
from tests.helpers import wait_until
from tests.integration.test_ingest import assert_exact, recount
from tests.integration.test_ingest_kill import committed

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3
WEIGHTS = {"interest": 1.0, "text": 0.0}  # the interest view alone: no feature-text passes
# (step, n-th arrival) per service: each step of the commit order, twice
INGEST_KILLS = [(step, nth) for step in (1, 2, 3, 4) for nth in (1, 3)]
ENCODER_KILLS = [(1, 3), (1, 10), (2, 1), (2, 3), (3, 1), (3, 3)]


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
    s.topics.events_partitions = PARTITIONS
    s.topics.segments_partitions = 3
    s.ingest = s.ingest.model_copy(update={
        "group_id": f"{unique}.ingest", "metrics_port": 0, "max_poll_records": 20,
        "session_timeout_ms": 6000})
    s.encoder = s.encoder.model_copy(update={"metrics_port": 0, "max_wait_ms": 0,
                                             "claim_batch": 16})
    s.interest = s.interest.model_copy(update={"view_weights": WEIGHTS})
    s.segmenter = s.segmenter.model_copy(update={
        "k": 3, "cold_start_factor": 10, "metrics_port": 0, "block_ms": 50,
        "catalog_refresh_s": 3600.0, "refit_every": 0})
    admin = kafka.admin()
    ensure_topics(admin, topic_specs(s.topics))
    admin.close()
    return s


@pytest.fixture
def steady(service_threads: list[tuple[Any, threading.Thread]]
           ) -> list[tuple[Any, threading.Thread]]:
    """The services that run throughout (threads of this process); stopped at the end."""
    return service_threads


def victim_env(settings: Settings) -> dict[str, str]:
    """The environment of a victim process: the same topics, group, prefix and views."""
    topics = {f"SEGSTREAM_TOPICS__{n.upper()}": getattr(settings.topics, n)
              for n in ("events", "dlq", "segments", "catalog", "assignments")}
    return {**os.environ, **topics, "SEGSTREAM_LOG_LEVEL": "WARNING",
            "SEGSTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix,
            "SEGSTREAM_INTEREST__VIEW_WEIGHTS": json.dumps(WEIGHTS),
            "SEGSTREAM_INGEST__GROUP_ID": settings.ingest.group_id,
            "SEGSTREAM_INGEST__METRICS_PORT": "0",
            "SEGSTREAM_INGEST__MAX_POLL_RECORDS": str(settings.ingest.max_poll_records),
            "SEGSTREAM_INGEST__SESSION_TIMEOUT_MS": "6000",
            "SEGSTREAM_ENCODER__METRICS_PORT": "0", "SEGSTREAM_ENCODER__TORCH_THREADS": "1",
            "SEGSTREAM_ENCODER__CLAIM_BATCH": str(settings.encoder.claim_batch),
            "SEGSTREAM_ENCODER__MAX_WAIT_MS": "0",
            "SEGSTREAM_ENCODER__LEASE_S": "5"}  # a dead victim's claims return soon


class Feed:
    """Produces the synthetic stream a chunk at a time, in order (one producer)."""

    def __init__(self, kafka: KafkaClients, topic: str, stream: SyntheticStream) -> None:
        self.topic = topic
        self.producer = kafka.producer(linger_ms=5)
        self.records = stream.records()
        self.futures: list[Any] = []

    def send(self, n: int | None) -> int:
        """Send the next ``n`` records (all that are left for None); returns how many."""
        sent = 0
        for key, value in self.records:
            self.futures.append(self.producer.send(self.topic, key=key, value=value))
            sent += 1
            if sent == n:
                break
        self.producer.flush(timeout=60)
        return sent

    def close(self) -> int:
        """Send the rest; returns the number of records the broker took."""
        self.send(None)
        taken = [f.get(timeout=30) for f in self.futures]
        self.producer.close()
        return len(taken)


class Victims:
    """Processes of ``service`` started one after another, each ending at the next of
    ``points`` (step, n-th arrival); ``exits`` keeps each one's point and exit status."""

    def __init__(self, service: str, points: list[tuple[int, int]], env: dict[str, str],
                 logs: Path) -> None:
        self.service, self.pending, self.env, self.logs = service, list(points), env, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: list[tuple[str, int, Path]] = []
        self.at, self.log = "", logs

    def advance(self) -> bool:
        """Start the next victim once the current one ended; True when all have ended."""
        if self.proc is not None:
            if self.proc.poll() is None:
                return False
            self.exits.append((self.at, self.proc.returncode, self.log))
            self.proc = None
        if not self.pending:
            return True
        step, nth = self.pending.pop(0)
        self.at = f"{self.service}:{step}@{nth}"
        self.log = self.logs / f"{self.service}-{step}-{nth}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segstream_services.cli", "run", self.service], cwd=ROOT,
            env={**self.env, "SEGSTREAM_CRASH_AT": self.at}, stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"))
        return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def read_topic(kafka: KafkaClients, topic: str) -> list[Any]:
    """Every record of ``topic``, from the start."""
    consumer = kafka.consumer(topic, group_id=None, consumer_timeout_ms=3000)
    records = list(consumer)
    consumer.close()
    return records


def expected_vector(client: redis.Redis, keys: Keys, version: str, uid: str
                    ) -> np.ndarray:
    """The user's interest vector from their stored state and item vectors (numpy)."""
    reply: Any = client.zrange(keys.interest(uid), 0, -1, withscores=True)
    state = {i.decode(): w for i, w in reply if w > 0}
    raw: list[Any] = [client.get(keys.item_vec(version, i)) for i in state]
    rows = np.asarray([vec_from_bytes(r) for r in raw], dtype=np.float64)
    v = np.asarray(list(state.values())) @ (rows / np.linalg.norm(rows, axis=1)[:, None])
    return v / np.linalg.norm(v)


def test_ingest_and_encoder_killed_at_every_step_lose_and_double_nothing(
        settings: Settings, redis_conn: redis.Redis, kafka: KafkaClients, encoder: Encoder,
        steady: list[tuple[Any, threading.Thread]], tmp_path: Path) -> None:
    keys = Keys(settings.redis.key_prefix)
    stream = SyntheticStream(users=400, days=21, seed=13, end_ms=int(time.time() * 1000),
                             duplicates=0.02, malformed=0.005, bots=0.01)
    feed = Feed(kafka, settings.topics.events, stream)
    for svc in (IngestService(settings), EncoderWorker(settings, encoder=encoder),
                SegmenterService(settings, consumer="steady")):
        thread = threading.Thread(target=svc.run, daemon=True)
        thread.start()
        steady.append((svc, thread))
    env = victim_env(settings)
    # one ingest victim and two encoder victims at a time (a model load is the slow part)
    chains = [Victims("ingest", INGEST_KILLS, env, tmp_path),
              Victims("encoder", ENCODER_KILLS[0::2], env, tmp_path),
              Victims("encoder", ENCODER_KILLS[1::2], env, tmp_path)]
    try:
        def all_ended() -> bool:
            assert feed.send(20) == 20, "the stream ran out before the last crash"
            return all([c.advance() for c in chains])  # a list: advance every chain

        wait_until(all_ended, 420, interval_s=0.2, what="every victim's crash")
    finally:
        for c in chains:
            c.kill()
    kills: Counter[str] = Counter()
    for c in chains:
        for at, rc, log in c.exits:
            assert rc == 137, (at, log.read_text()[-2000:])
            kills[c.service] += 1
    assert kills == {"ingest": 8, "encoder": 6}

    total = feed.close()
    assert total == sum(stream.counts.values())
    wait_until(lambda: committed(settings, PARTITIONS) == total, 180, interval_s=0.2,
               what="ingest to commit the whole stream")

    def settled() -> bool:
        if redis_conn.zcard(keys.dirty()) + redis_conn.zcard(keys.claims()):
            return False
        info = redis_conn.xinfo_groups(keys.embedded())[0]
        return info["pending"] == 0 and info.get("lag", 0) == 0 and \
            redis_conn.hget(keys.seg_state(), store.OUTBOX) is None

    wait_until(settled, 180, interval_s=0.2, what="encoder and segmenter to catch up")
    for svc, thread in steady:
        svc.stop()
        thread.join(30)
    steady.clear()

    # ingest: exact features, every malformed record dead-lettered (at least once)
    events = list(stream.events())
    expected = recount(events)
    assert_exact(settings, expected)
    sources = set()
    for letter in read_topic(kafka, settings.topics.dlq):
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers["segstream.source.topic"] == settings.topics.events
        sources.add((headers["segstream.source.partition"],
                     headers["segstream.source.offset"]))
    assert len(sources) == stream.counts["malformed"] > 0

    # encoder: each user's vector is that of their final interest state
    version = encoder.model_version
    encoded = sorted(expected)
    for uid in encoded:
        emb: list[Any] = redis_conn.hmget(keys.emb(uid), ["vec", "model_version"])
        assert emb[1] == version.encode(), uid
        assert np.allclose(vec_from_bytes(emb[0]),
                           expected_vector(redis_conn, keys, version, uid), atol=2e-3), uid

    # segmenter: what subscribers hold is what is stored, each user once, ids never reused
    last = {r.key.decode(): json.loads(r.value)["segment_id"]
            for r in read_topic(kafka, settings.topics.segments)}
    seg: list[Any] = [redis_conn.hget(keys.seg(uid), "segment_id") for uid in encoded]
    stored = {uid: (s or b"").decode() for uid, s in zip(encoded, seg, strict=True)}
    assert all(stored.values())  # every vector assigned
    assert stored == last
    born: dict[str, set[str]] = {}
    for record in read_topic(kafka, settings.topics.catalog):
        entry = json.loads(record.value)
        born.setdefault(entry["segment_id"], set()).add(entry["lineage"]["born_at"])
    assert born and all(len(b) == 1 for b in born.values())
    model, _, _ = store.read_state(redis_conn, keys)
    assert model is not None  # each user counted once, in the segment stored for them
    # (retired segments included: a user keeps a retired id until they are seen again)
    assert {s: seg.size for s, seg in model.segments.items() if seg.size} == \
        dict(Counter(stored.values()))
