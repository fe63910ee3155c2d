"""Scale-out: 2 ingest consumers + 2 encoder workers (``segstream run`` subprocesses) on the
same topics reach the same final state as 1 + 1, with no event lost or counted twice, also
when one of each is killed with SIGKILL mid-stream and the partitions rebalance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from segstream.config import Settings
from segstream.encoding import text_hash, vec_from_bytes
from segstream.kafka_client import kafka_clients
from segstream.redis_io import Keys, redis_client
from segstream.synthetic import SyntheticStream
from tests.helpers import both_kafka_clients, create_event_topics, wait_until
from tests.integration.test_ingest import assert_exact, recount
from tests.integration.test_ingest_kill import committed

pytestmark = pytest.mark.integration
PARTITIONS = 4


# one stream for both scenarios: fixed at import (its event times end "now")
END_MS = int(time.time() * 1000)


def stream() -> SyntheticStream:
    return SyntheticStream(users=150, days=14, seed=2026, end_ms=END_MS, duplicates=0.02,
                           malformed=0.005)


def isolated(infra: Settings, name: str) -> Settings:
    return infra.model_copy(update={
        "topics": infra.topics.model_copy(update={"events": f"{name}.events",
                                                  "dlq": f"{name}.dlq"}),
        "redis": infra.redis.model_copy(update={"key_prefix": name}),
        "ingest": infra.ingest.model_copy(update={"group_id": f"{name}.ingest"})})


def create_topics(settings: Settings) -> None:
    create_event_topics(settings, PARTITIONS)


class Fleet:
    """The ``segstream run`` processes of one scenario, with their logs."""

    def __init__(self, settings: Settings, logdir: Path) -> None:
        self.settings = settings
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, service: str) -> subprocess.Popen[bytes]:
        s = self.settings
        env = {**os.environ, "SEGSTREAM_KAFKA__CLIENT": s.kafka.client,
               "SEGSTREAM_TOPICS__EVENTS": s.topics.events, "SEGSTREAM_TOPICS__DLQ": s.topics.dlq,
               "SEGSTREAM_REDIS__KEY_PREFIX": s.redis.key_prefix,
               "SEGSTREAM_INGEST__GROUP_ID": s.ingest.group_id,
               "SEGSTREAM_INGEST__METRICS_PORT": "0",
               "SEGSTREAM_INGEST__MAX_POLL_RECORDS": "40",
               "SEGSTREAM_INGEST__SESSION_TIMEOUT_MS": "6000",
               "SEGSTREAM_ENCODER__METRICS_PORT": "0", "SEGSTREAM_ENCODER__DEVICE": "cpu",
               "SEGSTREAM_ENCODER__TORCH_THREADS": "1", "SEGSTREAM_ENCODER__CLAIM_BATCH": "16",
               "SEGSTREAM_ENCODER__LEASE_S": "3",
               # both views (the shipped text weight is 0): texts go through the model too
               "SEGSTREAM_INTEREST__VIEW_WEIGHTS": '{"interest": 1.0, "text": 0.5}',
               "SEGSTREAM_LOG_LEVEL": "WARNING"}
        log = (self.logdir / f"{s.redis.key_prefix}-{service}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "segstream_services.cli", "run",
                                 service], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append((service, proc))
        return proc

    def stop_all(self) -> dict[int, int]:
        """SIGTERM the live ones; return pid -> exit code of those."""
        live = [p for _, p in self.procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        codes = {}
        for proc in live:
            try:
                codes[proc.pid] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[proc.pid] = proc.wait()
        return codes

    def kill_all(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def fleets() -> Iterator[list[Fleet]]:
    made: list[Fleet] = []
    yield made
    for fleet in made:
        fleet.kill_all()


def produce(settings: Settings, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = kafka_clients(settings.kafka).producer(linger_ms=20)
    for key, value in records:
        producer.send(settings.topics.events, key=key, value=value)
    producer.flush(timeout=60)
    producer.close()


def encoded_everything(client: redis.Redis, keys: Keys) -> bool:
    """Every stored text has its own embedding, and then no user waits or is claimed.

    In this order: the text view writes a user's text fields and then marks them dirty
    for the recombination, so a check of the queues first could pass in between (on a
    Redis Cluster the two writes go to different nodes) and read the vector from before."""
    for raw in client.scan_iter(match=f"{keys.prefix}:u:*:text", count=500):
        uid = raw.decode().split("{", 1)[1].rsplit("}", 1)[0]
        text = client.get(raw)
        stored = client.hget(keys.emb(uid), "text_hash")
        if text is None or stored is None or stored.decode() != text_hash(text.decode()):
            return False
    return not client.zcard(keys.dirty()) and not client.zcard(keys.claims())


def settled(check: Callable[[], bool], times: int = 3) -> Callable[[], bool]:
    """``check`` true on ``times`` polls in a row (a quiet pipeline, not a lucky moment)."""
    streak = [0]

    def poll() -> bool:
        streak[0] = streak[0] + 1 if check() else 0
        return streak[0] >= times

    return poll


def final_state(settings: Settings) -> dict[str, tuple[str, np.ndarray]]:
    client = redis_client(settings.redis)
    keys = Keys(settings.redis.key_prefix)
    state = {}
    for raw in client.scan_iter(match=f"{keys.prefix}:u:*:text", count=500):
        uid = raw.decode().split("{", 1)[1].rsplit("}", 1)[0]
        vec = client.hget(keys.emb(uid), "vec")
        assert vec is not None, uid
        state[uid] = (client.get(raw).decode(), vec_from_bytes(vec))
    client.close()
    return state


def run_scenario(infra: Settings, name: str, fleet: Fleet, consumers: int, workers: int,
                 kill: bool) -> dict[str, tuple[str, np.ndarray]]:
    settings = fleet.settings
    create_topics(settings)
    records = list(stream().records())
    half = len(records) // 2
    client = redis_client(settings.redis)
    keys = Keys(settings.redis.key_prefix)
    ingest = [fleet.start("ingest") for _ in range(consumers)]
    encoders = [fleet.start("encoder") for _ in range(workers)]
    produce(settings, records[:half])
    if kill:
        # mid-stream: the consumers have committed part of the first half ...
        wait_until(lambda: committed(settings, PARTITIONS) >= half // 4, timeout_s=120,
                   interval_s=0.05, what="ingest progress before the kill")
        ingest[0].send_signal(signal.SIGKILL)
        assert committed(settings, PARTITIONS) < half, "the ingest kill must land mid-stream"
        # ... and the encoders have written embeddings while users still wait or are claimed
        wait_until(lambda: client.xlen(keys.embedded()) > 0
                   and client.zcard(keys.dirty()) + client.zcard(keys.claims()) > 0,
                   timeout_s=240, interval_s=0.05, what="encoder progress before the kill")
        encoders[0].send_signal(signal.SIGKILL)
        for victim in (ingest[0], encoders[0]):
            victim.wait(timeout=10)
            assert victim.returncode == -signal.SIGKILL
    produce(settings, records[half:])
    wait_until(lambda: committed(settings, PARTITIONS) == len(records), timeout_s=240,
               interval_s=0.2, what=f"{name}: every record consumed and committed")
    wait_until(settled(lambda: encoded_everything(client, keys)), timeout_s=240, interval_s=0.5,
               what=f"{name}: every final text encoded")
    client.close()
    codes = fleet.stop_all()
    assert codes and set(codes.values()) == {0}, codes
    assert_exact(settings, recount(list(stream().events())))  # nothing lost or doubled
    return final_state(settings)


@both_kafka_clients
def test_two_plus_two_with_sigkill_equals_one_plus_one(kafka_infra: Settings, unique: str,
                                                      tmp_path: Path,
                                                      fleets: list[Fleet]) -> None:
    one = Fleet(isolated(kafka_infra, f"{unique}-a"), tmp_path)
    two = Fleet(isolated(kafka_infra, f"{unique}-b"), tmp_path)
    fleets += [one, two]
    single = run_scenario(kafka_infra, "1 + 1", one, consumers=1, workers=1, kill=False)
    scaled = run_scenario(kafka_infra, "2 + 2, one of each SIGKILLed", two, consumers=2, workers=2,
                          kill=True)
    assert len(single) == len({e["user_id"] for e in stream().events()})
    assert single.keys() == scaled.keys()
    for uid, (text, vec) in single.items():
        other_text, other_vec = scaled[uid]
        assert other_text == text, uid
        cosine = float(np.dot(vec, other_vec) / (np.linalg.norm(vec) * np.linalg.norm(other_vec)))
        assert cosine > 0.999, (uid, cosine)
