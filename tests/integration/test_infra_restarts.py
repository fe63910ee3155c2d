"""Infrastructure faults with every service running: ``kill -9`` of Redis (AOF
``everysec``, then AOF off) and of the Kafka broker, each restarted on the same port and
data directory while ingest, encoder (the real model) and segmenter run as
``segstream run`` processes.

Each test runs a Redis (and for the broker test a Kafka) of its own on free ports under
``tmp_path``; the session's Kafka and Redis are never touched. Events come in three
phases of distinct users: A before the fault, B paced while the fault lands, C after the
restart. Waits are deadlines (``wait_until``), never sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from segstream.config import LocalInfraSettings, Settings
from segstream.feature_store import FeatureStore
from segstream.features import summarize
from segstream.kafka_client import kafka_clients
from segstream.kafka_io import topic_specs
from segstream.keys import Keys
from segstream.redis_io import redis_client
from segstream.synthetic import SyntheticStream
from segstream_services.dev.local_kafka import LocalKafka
from segstream_services.dev.local_redis import LocalRedis
from segstream_services.dev.processes import port_open
from tests.helpers import wait_until
from tests.integration.test_health import free_port, get
from tests.integration.test_ingest import recount

pytestmark = pytest.mark.integration
SERVICES = ("ingest", "encoder", "segmenter")
RECOVER_S = 30.0  # the bar: every service recovers (or raises the alarm) within this
RATE = 150  # phase B events a second, so the fault lands mid-stream
USERS = 30  # per phase


# ---------------------------------------------------------------- private infrastructure
class PrivateRedis:
    """A redis-server of this test's own (``LocalRedis`` on a free port, data in tmp)."""

    def __init__(self, settings: Settings, home: Path, appendonly: bool) -> None:
        self.server = LocalRedis(LocalInfraSettings(
            home=home, redis_port=free_port(), redis_appendonly=appendonly,
            start_timeout_s=30.0, stop_timeout_s=10.0))
        self.port = self.server.local.redis_port
        self.settings = settings.model_copy(update={"redis": settings.redis.model_copy(
            update={"host": "127.0.0.1", "port": self.port})})
        self.server.start(self.settings)

    def kill9(self) -> None:
        pid = self.server.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # its command line empties before its sockets close: wait for the port too
        wait_until(lambda: self.server.pid() is None and not port_open(self.port), 10,
                   what="redis-server gone")

    def restart(self) -> None:
        assert self.server.start(self.settings)  # same port, same dir (and AOF file)

    def stop(self) -> None:
        self.server.stop()


class PrivateKafka:
    """A single-node KRaft broker of this test's own: the session's jars, free ports, data
    under tmp."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        local = settings.local.model_copy(update={
            "kafka_port": free_port(), "kafka_controller_port": free_port(),
            "kafka_sasl_port": 0, "kafka_heap_mb": 256, "start_timeout_s": 90.0,
            "stop_timeout_s": 20.0})
        self.broker = LocalKafka(local)
        self.broker.dir = tmp / "kafka"
        self.broker.pid_file = self.broker.dir / "kafka.pid"
        self.broker.log_path = self.broker.dir / "logs" / "server.log"
        self.bootstrap = f"127.0.0.1:{local.kafka_port}"
        self.settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"bootstrap_servers": self.bootstrap, "security_protocol": "PLAINTEXT",
                    "sasl_mechanism": None, "sasl_username": None, "sasl_password": None})})
        self.broker.start(self.settings)

    def kill9(self) -> None:
        pid = self.broker.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        local = self.broker.local
        wait_until(lambda: self.broker.pid() is None and not port_open(local.kafka_port)
                   and not port_open(local.kafka_controller_port), 20, what="the broker gone")

    def restart(self) -> None:
        assert self.broker.start(self.settings)

    def stop(self) -> None:
        self.broker.stop()


# ---------------------------------------------------------------- the services
class Pipeline:
    """``segstream run ingest|encoder|segmenter`` processes with /metrics and /healthz."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.ports = {name: free_port() for name in SERVICES}
        self.logs = {name: tmp / f"{name}.log" for name in SERVICES}
        t = settings.topics
        env = {**os.environ,
               "SEGSTREAM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
               "SEGSTREAM_REDIS__HOST": settings.redis.host,
               "SEGSTREAM_REDIS__PORT": str(settings.redis.port),
               "SEGSTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix,
               **{f"SEGSTREAM_TOPICS__{n.upper()}": getattr(t, n)
                  for n in ("events", "dlq", "segments", "catalog", "assignments")},
               "SEGSTREAM_INGEST__GROUP_ID": settings.ingest.group_id,
               "SEGSTREAM_INGEST__SESSION_TIMEOUT_MS": "6000",
               "SEGSTREAM_ENCODER__DEVICE": "cpu", "SEGSTREAM_ENCODER__TORCH_THREADS": "1",
               "SEGSTREAM_SEGMENTER__K": "3", "SEGSTREAM_SEGMENTER__COLD_START_FACTOR": "2",
               "SEGSTREAM_SEGMENTER__REFIT_EVERY": "0", "SEGSTREAM_LOG_LEVEL": "INFO"}
        self.last: dict[str, tuple[int, dict[str, Any]]] = {}
        self.procs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "segstream_services.cli", "run", name,
                 "--metrics-port", str(self.ports[name])],
                env=env, stdout=subprocess.DEVNULL, stderr=self.logs[name].open("w"))
            for name in SERVICES}

    def health(self, name: str) -> tuple[int, dict[str, Any]]:
        try:
            status, body = get(f"http://127.0.0.1:{self.ports[name]}/healthz")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, {}
        return status, json.loads(body)

    def metric(self, name: str, sample: str) -> float:
        """A sample of a service's /metrics (0 when absent)."""
        status, body = get(f"http://127.0.0.1:{self.ports[name]}/metrics")
        assert status == 200
        for line in body.decode().splitlines():
            if line.startswith(f"{sample} "):
                return float(line.split()[-1])
        return 0.0

    def all_healthy(self) -> bool:
        self.assert_running()
        with ThreadPoolExecutor(len(SERVICES)) as pool:
            self.last = dict(zip(SERVICES, pool.map(self.health, SERVICES), strict=True))
        return all(status == 200 for status, _ in self.last.values())

    def wait_healthy(self, timeout_s: float, what: str) -> float:
        """Wait until every /healthz answers 200; returns the seconds it took."""
        t0 = time.monotonic()
        try:
            wait_until(self.all_healthy, timeout_s, interval_s=0.5, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last /healthz replies: {self.last}") from None
        return time.monotonic() - t0

    def all_report(self, check: str, names: tuple[str, ...] = SERVICES) -> bool:
        """True once each named service's /healthz is 503 with ``check`` failing."""
        self.assert_running()
        with ThreadPoolExecutor(len(names)) as pool:  # probes of a dead Redis take seconds
            replies = list(pool.map(self.health, names))
        return all(status == 503 and doc["checks"].get(check, "ok") != "ok"
                   for status, doc in replies)

    def assert_running(self) -> None:
        """No service exited (no crash, so nothing for a supervisor to restart-loop)."""
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited {proc.returncode}:\n" + \
                self.logs[name].read_text()[-3000:]

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


# ---------------------------------------------------------------- events
class Events:
    """Three phases of synthetic users (ids ``a-``, ``b-``, ``c-``) and what was sent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.phases: dict[str, list[dict[str, Any]]] = {}
        now = int(time.time() * 1000)
        for n, phase in enumerate("abc"):
            stream = SyntheticStream(users=USERS, days=7, seed=40 + n, end_ms=now)
            events = []
            for e in stream.events():
                events.append({**e, "user_id": f"{phase}-{e['user_id']}",
                               "event_id": f"{phase}-{e['event_id']}"})
            self.phases[phase] = events

    def users(self, phase: str) -> set[str]:
        return {e["user_id"] for e in self.phases[phase]}

    def produce(self, phase: str, rate: float = 0.0, producer: Any = None) -> int:
        """Send a phase's events (at most ``rate`` a second, 0: at once); returns how many."""
        own = producer is None
        producer = producer or kafka_clients(self.settings.kafka).producer()
        start = time.monotonic()
        for i, e in enumerate(self.phases[phase]):
            producer.send(self.settings.topics.events, json.dumps(e).encode(),
                          key=e["user_id"].encode())
            if rate and i % 10 == 9:
                ahead = (i + 1) / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)  # pacing the producer, not waiting for a result
        producer.flush(timeout=120)
        if own:
            producer.close()
        return len(self.phases[phase])


def in_background(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:  # surfaced by the test after join
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def segmented(client: redis.Redis, keys: Keys, users: set[str]) -> bool:
    """Every user has a segment, and nothing waits for the encoder or the segmenter."""
    pipe = client.pipeline(transaction=False)
    for uid in sorted(users):
        pipe.hget(keys.seg(uid), "segment_id")
    try:
        if not all(pipe.execute()):
            return False
        return client.zcard(keys.dirty()) == 0 and client.zcard(keys.claims()) == 0
    except redis.ConnectionError:
        return False


def items_missing(client: redis.Redis, keys: Keys, users: set[str]) -> int:
    """How many items in the users' interest vectors had no vector (no registered text)."""
    pipe = client.pipeline(transaction=False)
    for uid in sorted(users):
        pipe.hget(keys.emb(uid), "interest_missing")
    return sum(int(n or 0) for n in pipe.execute())


def stored_counts(settings: Settings, users: set[str]) -> dict[str, dict[str, int]]:
    """Each user's 30-day event counts by type, as ingest stored them."""
    client = redis_client(settings.redis)
    store = FeatureStore(client, settings)
    out = {}
    for uid in sorted(users):
        state, _ = store.read_user(uid)
        out[uid] = dict(summarize(state, settings.ingest, max_categories=100).window(30).types)
    client.close()
    return out


def number(segment_id: str) -> int:
    """The number in a segment or family id (``s12`` → 12)."""
    return int(segment_id[1:])


def expected_counts(events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts = cast(dict[str, dict[Any, Any]], recount(events))  # windows keyed by days
    return {uid: want[30]["types"] for uid, want in counts.items()}


def catalog_ids(client: redis.Redis, keys: Keys) -> set[str]:
    """The segment and family ids in the stored catalog."""
    return {k.decode() for k in cast(list[bytes], client.hkeys(keys.seg_catalog()))}


# ---------------------------------------------------------------- fixtures
def isolated(infra: Settings, unique: str) -> Settings:
    s = infra.model_copy(deep=True)
    s.redis.key_prefix = unique
    for name in ("events", "dlq", "segments", "catalog", "assignments"):
        setattr(s.topics, name, f"{unique}.{name}")
    s.ingest.group_id = f"{unique}.ingest"
    return s


def create_topics(settings: Settings) -> None:
    """Every segstream topic of this test (events: 3 partitions), visible in metadata."""
    specs = topic_specs(settings.topics.model_copy(update={"events_partitions": 3}))
    admin = kafka_clients(settings.kafka).admin()
    try:
        admin.create_topics(specs)
        wait_until(lambda: {s.name for s in specs} <= admin.list_topics(), 30,
                   what="the topics")
    finally:
        admin.close()


def phase_a_segmented(private: PrivateRedis | PrivateKafka, tmp_path: Path,
                      cleanup: list[Any]) -> tuple[Keys, Events, Pipeline, redis.Redis]:
    """All three services running on ``private``'s settings, healthy, and phase A's users
    segmented: the start both fault tests share."""
    create_topics(private.settings)
    events = Events(private.settings)
    pipeline = Pipeline(private.settings, tmp_path)
    cleanup.append(pipeline)
    client = redis_client(private.settings.redis)
    pipeline.wait_healthy(180, "every service healthy")
    events.produce("a")
    keys = Keys(private.settings.redis.key_prefix)
    wait_until(lambda: segmented(client, keys, events.users("a")), 180, interval_s=0.5,
               what="phase A users segmented")
    return keys, events, pipeline, client


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    """Things with a ``stop()`` to call at the end, last first."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        thing.stop()


# ---------------------------------------------------------------- Redis
@pytest.mark.parametrize("appendonly", [True, False], ids=["aof-everysec", "aof-off"])
def test_redis_killed_and_restarted_under_a_running_pipeline(
        infra: Settings, unique: str, tmp_path: Path, appendonly: bool,
        cleanup: list[Any]) -> None:
    redis_ = PrivateRedis(isolated(infra, unique), tmp_path, appendonly)
    cleanup.append(redis_)
    settings = redis_.settings
    keys, events, pipeline, client = phase_a_segmented(redis_, tmp_path, cleanup)
    ids_a = catalog_ids(client, keys)

    producing, result = in_background(events.produce, "b", RATE)
    wait_until(lambda: client.exists(keys.text(events.phases["b"][RATE]["user_id"])), 30,
               interval_s=0.02, what="phase B under way")  # mid-stream: ~1 s of B applied
    redis_.kill9()
    wait_until(lambda: pipeline.all_report("redis"), RECOVER_S, interval_s=0.2,
               what="every service to report Redis down")  # down long enough to notice
    redis_.restart()
    restarted = time.monotonic()
    producing.join(120)
    assert result == [len(events.phases["b"])]

    if appendonly:
        # the AOF kept every acknowledged write (kill -9 spares the page cache): all recover
        pipeline.wait_healthy(RECOVER_S, "every service healthy again")
        healthy_after = time.monotonic() - restarted
        events.produce("c")
        everyone = events.users("a") | events.users("b") | events.users("c")
        wait_until(lambda: segmented(client, keys, everyone), 120, interval_s=0.5,
                   what="every user of A, B and C segmented")
        sent = events.phases["a"] + events.phases["b"] + events.phases["c"]
        assert stored_counts(settings, everyone) == expected_counts(sent)  # none lost/twice
        for name in SERVICES:
            assert pipeline.metric(name, "segstream_state_lost_total") == 0, name
        assert items_missing(client, keys, everyone) == 0  # items of failed writes resent
        print(f"aof everysec: healthy {healthy_after:.1f}s after restart; "
              f"{len(sent)} events, {len(everyone)} users, 0 lost, 0 doubled")
    else:
        # the data is gone: every service says so on /healthz and counts it, none exits
        def alarmed() -> bool:
            pipeline.assert_running()
            with ThreadPoolExecutor(len(SERVICES)) as pool:
                replies = list(pool.map(pipeline.health, SERVICES))
            return all(status == 503 and doc["checks"].get("state", "").startswith(
                "Redis lost its data") for status, doc in replies)

        wait_until(alarmed, RECOVER_S, interval_s=0.5, what="the state-lost alarm")
        alarmed_after = time.monotonic() - restarted
        for name in SERVICES:
            assert pipeline.metric(name, "segstream_state_lost_total") >= 1, name
            assert pipeline.metric(name, "segstream_state_data_lost") == 1, name
        # the services still work on what comes after the loss
        events.produce("c")
        wait_until(lambda: segmented(client, keys, events.users("c")), 120, interval_s=0.5,
                   what="phase C users segmented after the loss")
        assert stored_counts(settings, events.users("c")) == \
            expected_counts(events.phases["c"])
        assert items_missing(client, keys, events.users("c")) == 0  # items registered anew
        ids_c = catalog_ids(client, keys)
        assert ids_c and not ids_c & ids_a, (ids_a, ids_c)  # no id reused after the loss
        for kind in {i[0] for i in ids_c}:  # s: segments, f: families; numbers continue
            assert min(number(i) for i in ids_c if i[0] == kind) > \
                max((number(i) for i in ids_a if i[0] == kind), default=0), (ids_a, ids_c)
        client.hdel(keys.state_epoch(), "lost", "lost_ms")  # the operator acknowledges
        pipeline.wait_healthy(RECOVER_S, "every service healthy once the loss is acknowledged")
        print(f"aof off: alarm on every service {alarmed_after:.1f}s after restart")
    pipeline.assert_running()
    assert pipeline.stop() == dict.fromkeys(SERVICES, 0)
    client.close()


# ---------------------------------------------------------------- Kafka
def test_broker_killed_and_restarted_mid_stream(
        infra: Settings, unique: str, tmp_path: Path, cleanup: list[Any]) -> None:
    kafka = PrivateKafka(isolated(infra, unique), tmp_path)
    cleanup.append(kafka)
    settings = kafka.settings
    keys, events, pipeline, client = phase_a_segmented(kafka, tmp_path, cleanup)
    events.produce("b")  # ingest is still consuming these when the broker dies
    kafka.kill9()
    wait_until(lambda: pipeline.all_report("kafka", ("ingest", "segmenter")), RECOVER_S,
               interval_s=0.2, what="ingest and segmenter to report the broker down")
    kafka.restart()
    restarted = time.monotonic()
    events.produce("c")
    everyone = events.users("a") | events.users("b") | events.users("c")
    wait_until(lambda: segmented(client, keys, everyone), RECOVER_S, interval_s=0.5,
               what="every user segmented after the restart")
    completed_after = time.monotonic() - restarted
    pipeline.wait_healthy(RECOVER_S, "every service healthy")
    sent = events.phases["a"] + events.phases["b"] + events.phases["c"]
    assert stored_counts(settings, everyone) == expected_counts(sent)  # none lost, none twice
    print(f"broker restart: {len(sent)} events, {len(everyone)} users segmented "
          f"{completed_after:.1f}s after restart, 0 lost, 0 doubled")
    pipeline.assert_running()
    assert pipeline.stop() == dict.fromkeys(SERVICES, 0)
    client.close()


def test_a_loss_declared_twice_is_one_epoch_and_an_acknowledgement_sticks(
        infra: Settings, unique: str, tmp_path: Path, cleanup: list[Any]) -> None:
    """The race the AOF-off test met: the segmenter declares the loss again (catalog
    evidence) after the health checks saw it; a process not probed in between must not
    undo the operator's acknowledgement by declaring it once more."""
    from segstream.errors import InfraError
    from segstream.metrics import ServiceMetrics
    from segstream.state_epoch import StateEpoch

    redis_ = PrivateRedis(isolated(infra, unique), tmp_path, appendonly=False)
    cleanup.append(redis_)
    client = redis_client(redis_.settings.redis)
    keys = Keys(unique)
    metrics = {name: ServiceMetrics(name) for name in ("ingest", "encoder", "segmenter")}
    epochs = {name: StateEpoch(client, keys, m) for name, m in metrics.items()}
    for epoch in epochs.values():
        epoch.check()  # all share the first epoch
    redis_.kill9()
    redis_.restart()  # empty: no AOF
    for epoch in epochs.values():
        with pytest.raises(InfraError, match=r"the state epoch \w+ vanished"):
            epoch.check()
    marked = client.hget(keys.state_epoch(), "id")
    epochs["segmenter"].declare_lost("Redis lost its data: the catalog lists s3")
    assert client.hget(keys.state_epoch(), "id") == marked  # one loss, one epoch
    client.hdel(keys.state_epoch(), "lost", "lost_ms")  # the operator acknowledges
    for epoch in epochs.values():
        epoch.check()  # healthy again, nobody declares it anew
    assert client.hget(keys.state_epoch(), "id") == marked
    for m in metrics.values():
        assert m.registry.get_sample_value("segstream_state_lost_total") == 1

    asleep = StateEpoch(client, keys, ServiceMetrics("asleep"))
    asleep.check()  # a process that will not look while the next loss comes and goes
    client.delete(keys.state_epoch())  # the next loss
    with pytest.raises(InfraError):
        epochs["ingest"].check()
    client.hdel(keys.state_epoch(), "lost", "lost_ms")
    asleep.check()  # the acknowledged loss is recognised (counted), not declared again
    assert asleep.lost_total is not None and asleep.lost_total._value.get() == 1
    for epoch in epochs.values():
        epoch.check()
    client.close()


def test_an_encoder_batch_cut_by_a_redis_kill_is_requeued_not_left_to_its_lease(
        infra: Settings, unique: str, tmp_path: Path, cleanup: list[Any]) -> None:
    """Redis (AOF) dies while the encoder holds a claim: the claims survive the restart,
    and the users must be encoded again within the recovery bar, not after ``lease_s``."""
    import torch

    from segstream.encoding import Encoder
    from segstream_services.encoder.service import EncoderWorker

    redis_ = PrivateRedis(isolated(infra, unique), tmp_path, appendonly=True)
    cleanup.append(redis_)
    settings = redis_.settings
    assert settings.encoder.lease_s >= 2 * RECOVER_S  # the lease alone would be too late
    keys = Keys(settings.redis.key_prefix)
    client = redis_client(settings.redis)
    users = {f"u{i}": f"item-{i}" for i in range(settings.encoder.claim_batch)}
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for uid, item in users.items():  # one item each, its text not yet embedded
        pipe.hset(keys.item(item), mapping={"title": f"{item} gadget number {uid}",
                                            "category": "electronics"})
        pipe.zadd(keys.interest(uid), {item: 1.0})
        pipe.zadd(keys.dirty(), {uid: now})
    pipe.execute()
    torch.set_num_threads(1)
    worker = EncoderWorker(settings, encoder=Encoder())
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    cleanup.append(worker)
    wait_until(lambda: client.zcard(keys.claims()) > 0, 60, interval_s=0.005,
               what="the worker to claim the batch")
    redis_.kill9()  # while it embeds the batch's items
    wait_until(lambda: worker.metrics.redis_errors._value.get() >= 1, RECOVER_S,
               what="the batch to fail on Redis")
    redis_.restart()
    assert client.zcard(keys.claims()) == len(users)  # the AOF kept the claims
    wait_until(lambda: client.xlen(keys.embedded()) == len(users), RECOVER_S,
               interval_s=0.2, what="every user encoded after the restart")
    assert thread.is_alive() and client.zcard(keys.claims()) == 0
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.embedded()))
    assert {f[b"user_id"].decode() for _, f in entries} == set(users)
    worker.stop()
    thread.join(30)
    client.close()
