"""The encoder service against the real Redis and the real model.

Texts, interest states, items and dirty marks are written per the ``Keys`` contract,
exactly as ingest does. The text-view tests run the encoder with the text view alone
(``text_only``); the claim tests use the interest path (``interest_users``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from segstream.config import Settings
from segstream.encoding import Encoder, cosine_rows, text_hash, vec_from_bytes
from segstream.redis_io import Keys
from segstream.stream_entry import EmbeddedEntry
from segstream_services.encoder.claims import Claim, ClaimQueue
from segstream_services.encoder.service import BatchReport, EncoderWorker
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.set_num_threads(2)
    return Encoder()


TEXT_ONLY = {"view_weights": {"interest": 0.0, "text": 1.0}}


def configured(infra: Settings, prefix: str, interest: dict[str, object] | None = None,
               **encoder: object) -> Settings:
    """The text view alone, embedded as soon as it changes, unless ``interest`` says."""
    return infra.model_copy(update={
        "redis": infra.redis.model_copy(update={"key_prefix": prefix}),
        "encoder": infra.encoder.model_copy(update={"metrics_port": 0,
                                                    "text_min_interval_s": 0, **encoder}),
        "interest": infra.interest.model_copy(update=interest or TEXT_ONLY),
    })


def interest_users(client: redis.Redis, keys: Keys, users: dict[str, dict[str, float]]
                   ) -> Counter[str]:
    """Write interest states (item → weight; items get a title) and dirty marks like
    ingest; returns the new marks per user."""
    pipe = client.pipeline(transaction=False)
    now = time.time_ns() // 1_000_000
    for uid, state in users.items():
        for item in state:
            pipe.hsetnx(keys.item(item), "title", f"{item.replace('-', ' ')} gift set")
        pipe.delete(keys.interest(uid))
        pipe.zadd(keys.interest(uid), state)
    pipe.execute()
    for uid in users:
        pipe.zadd(keys.dirty(), {uid: now}, nx=True)
    added = pipe.execute()
    return Counter(uid for uid, new in zip(users, added, strict=True) if new)


def mark(client: redis.Redis, keys: Keys, users: dict[str, str]) -> Counter[str]:
    """Write texts and dirty marks like ingest; returns the new marks per user."""
    pipe = client.pipeline(transaction=False)
    now = time.time_ns() // 1_000_000
    for uid, text in users.items():
        pipe.set(keys.text(uid), text)
        pipe.zadd(keys.dirty(), {uid: now}, nx=True)
    added = pipe.execute()[1::2]
    return Counter(uid for uid, new in zip(users, added, strict=True) if new)


def stream_users(client: redis.Redis, keys: Keys) -> Counter[str]:
    return Counter(f[b"user_id"].decode() for _, f in client.xrange(keys.embedded()))


def drain(worker: EncoderWorker, timeout_s: float = 60.0) -> list[BatchReport]:
    """Step the worker until the queue (dirty and claimed) is empty."""
    reports: list[BatchReport] = []
    client, keys = worker.client, worker.keys

    def empty() -> bool:
        result = worker.step()
        worker.text_step()
        if isinstance(result, BatchReport):
            reports.append(result)
        return client.zcard(keys.dirty()) + client.zcard(keys.claims()) + \
            client.zcard(keys.text_due()) == 0

    wait_until(empty, timeout_s=timeout_s, interval_s=0.05, what="an empty queue")
    return reports


def text_for(uid: str, version: int = 0) -> str:
    n = int(uid.rsplit("-", 1)[1])
    cats = ("electronics", "books", "garden", "music", "toys", "sports")
    return (f"Last 30 days: {n % 40 + version} views, {n % 3} purchases. Mostly "
            f"{cats[n % 6]} ({50 + n % 40}%). Recently: item {n}, item {n + version + 1}.")


def test_encodes_stores_and_caches_repeated_texts(
        infra: Settings, redis_conn: redis.Redis, unique: str, encoder: Encoder) -> None:
    settings = configured(infra, unique, claim_batch=64, max_wait_ms=0)
    keys = Keys(unique)
    texts = [text_for(f"u-{i}") for i in range(6)]
    users = {f"a-{i}": texts[i % 6] for i in range(30)}  # 6 distinct texts, 5 users each
    assert sum(mark(redis_conn, keys, users).values()) == 30
    worker = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    drain(worker)
    assert worker.totals["encoded"] == 6 and worker.totals["cache"] == 24

    entries = redis_conn.xrange(keys.embedded())
    assert len(entries) == 30 and stream_users(redis_conn, keys) == Counter(users.keys())
    fields = entries[0][1]
    assert set(fields) == {b"user_id", b"model_version", b"text_hash", b"dirty_ms",
                           b"encoded_ms"}
    assert int(fields[b"encoded_ms"]) >= int(fields[b"dirty_ms"])
    stored = [redis_conn.hgetall(keys.emb(uid)) for uid in users]
    assert all(s[b"model_version"] == encoder.model_version.encode() for s in stored)
    assert all(s[b"text_hash"] == text_hash(t).encode()
               for s, t in zip(stored, users.values(), strict=True))
    vecs = np.vstack([vec_from_bytes(s[b"vec"]) for s in stored])
    assert vecs.shape == (30, 384)
    assert cosine_rows(vecs, encoder.encode(list(users.values()))).min() >= 0.999

    # Another worker: new users with texts seen before come from the shared cache.
    other = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    mark(redis_conn, keys, {f"b-{i}": texts[i % 6] for i in range(12)})
    drain(other)
    assert other.totals["cache"] == 12 and other.totals["texts_encoded"] == 0
    assert other.cache is not None and other.cache.hits == 6 and other.cache.hit_rate == 1.0

    # Re-marked with the same text: the stored vector is reused, the segmenter still hears.
    mark(redis_conn, keys, {f"a-{i}": users[f"a-{i}"] for i in range(5)})
    redis_conn.zadd(keys.dirty(), {"ghost": 1})  # a mark without a text
    drain(other)
    assert other.totals["unchanged"] == 5 and other.totals["missing_text"] == 1
    assert len(redis_conn.xrange(keys.embedded())) == 30 + 12 + 5
    assert redis_conn.hlen(keys.claim_meta()) == 0
    exposition = other.metrics.base.exposition().decode()
    assert "segstream_encoder_cache_hits_total 12.0" in exposition
    assert other.cache.stored == 0 and worker.cache is not None and worker.cache.stored == 6

    # A text seen once leaves only a marker; its vector is cached once it recurs.
    rare = "Last 30 days: 1 event. Mostly woodworking (100%)."
    for n, uid in enumerate(("r-1", "r-2", "r-3")):
        mark(redis_conn, keys, {uid: rare})
        drain(other)
        assert bool(redis_conn.exists(other.cache.key(text_hash(rare)))) == (n >= 1)
    assert other.totals["texts_encoded"] == 2 and other.totals["cache"] == 12 + 1
    assert 'segstream_encoder_users_total{outcome="unchanged"} 5.0' in exposition
    assert "segstream_encoder_encode_seconds_count" in exposition


def test_size_or_max_wait_trigger(infra: Settings, redis_conn: redis.Redis, unique: str,
                                  encoder: Encoder) -> None:
    settings = configured(infra, unique, claim_batch=50, max_wait_ms=400)
    keys = Keys(unique)
    worker = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    mark(redis_conn, keys, {f"w-{i}": text_for(f"w-{i}") for i in range(3)})
    first = worker.step()
    assert isinstance(first, Claim) and not first.users and 0 < first.wait_ms <= 400
    report = wait_until(lambda: (r := worker.step()) and isinstance(r, BatchReport) and r,
                        timeout_s=10, what="the max-wait trigger")
    assert report.users == 3
    mark(redis_conn, keys, {f"s-{i}": text_for(f"s-{i}") for i in range(120)})
    sizes = [r.users for r in drain(worker)]
    assert sizes[:2] == [50, 50]  # the size trigger fires without waiting


def test_claims_skip_users_held_by_live_claims(redis_conn: redis.Redis, unique: str
                                               ) -> None:
    keys = Keys(unique)
    a, b = ClaimQueue(redis_conn, keys, "a"), ClaimQueue(redis_conn, keys, "b")
    mark(redis_conn, keys, {"x": "one", "y": "two"})
    held = a.claim(batch=1, max_wait_ms=0, lease_ms=60_000)
    assert [u for u, _ in held.users] == ["x"] and held.token == f"a:{held.fence}"
    mark(redis_conn, keys, {"x": "one, changed"})  # re-marked while a holds it
    got = b.claim(batch=10, max_wait_ms=0, lease_ms=60_000)
    assert [u for u, _ in got.users] == ["y"] and got.fence > held.fence
    idle = b.claim(batch=10, max_wait_ms=0, lease_ms=60_000)
    assert not idle.users and idle.wait_ms == -1  # x waits for a's claim: no busy loop
    assert redis_conn.zcard(keys.dirty()) == 1
    # b cannot complete a's claim; a can, once; then x is claimable again
    done = [EmbeddedEntry("x", "m", "h", held.users[0][1], 1)]
    assert b.complete(got.token, done) == (0, 1)
    assert a.complete(held.token, done) == (1, 0)
    assert a.complete(held.token, done) == (0, 1)
    assert [u for u, _ in b.claim(10, 0, 60_000).users] == ["x"]
    # a write fenced by an older claim never overwrites a newer one
    assert b.write_embeddings(got.fence, [("z", {"vec": b"new", "vec_hash": "h2"})]) == 0
    assert a.write_embeddings(held.fence, [("z", {"vec": b"old", "vec_hash": "h1"})]) == 1
    assert redis_conn.hget(keys.emb("z"), "vec") == b"new"
    assert redis_conn.xlen(keys.embedded()) == 1


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def spawn_worker(procs: list[subprocess.Popen], prefix: str, log: Path,
                 env: dict[str, str] | None = None, **encoder: object) -> subprocess.Popen:
    env = {**os.environ, **(env or {}), "SEGSTREAM_REDIS__KEY_PREFIX": prefix,
           "SEGSTREAM_ENCODER__METRICS_PORT": "0", "SEGSTREAM_ENCODER__TORCH_THREADS": "1",
           **{f"SEGSTREAM_ENCODER__{k.upper()}": str(v) for k, v in encoder.items()}}
    p = subprocess.Popen([sys.executable, "-m", "segstream_services.cli", "run", "encoder"],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=log.open("w"))
    procs.append(p)
    return p


INTEREST_NO_CENTER = {"view_weights": {"interest": 1.0, "text": 0.0}, "center_items": False}


def interest_env() -> dict[str, str]:
    return {"SEGSTREAM_INTEREST__VIEW_WEIGHTS": '{"interest": 1.0, "text": 0.0}',
            "SEGSTREAM_INTEREST__CENTER_ITEMS": "false"}


def state_for(uid: str, version: int = 0, items: int = 5) -> dict[str, float]:
    """A user's interest state on ``items`` items of their own (new ones per version)."""
    return {f"{uid}-item-{version}-{j}": 1.0 + j for j in range(items)}


def expected_vector(client: redis.Redis, keys: Keys, version: str, state: dict[str, float]
                    ) -> np.ndarray:
    rows = [vec_from_bytes(client.get(keys.item_vec(version, i))) for i in state]
    rows = [r / np.linalg.norm(r) for r in rows]
    v = np.asarray(list(state.values())) @ np.asarray(rows)
    return v / np.linalg.norm(v)


def test_killed_worker_claims_are_encoded_by_another(
        infra: Settings, redis_conn: redis.Redis, unique: str, encoder: Encoder,
        procs: list[subprocess.Popen], tmp_path: Path) -> None:
    keys = Keys(unique)
    # 500 items that no one embedded yet: the victim embeds them inside its claim
    users = {f"k-{i}": state_for(f"k-{i}") for i in range(100)}
    interest_users(redis_conn, keys, users)
    victim = spawn_worker(procs, unique, tmp_path / "victim.log", claim_batch=100,
                          lease_s=2, max_wait_ms=0, dtype="float32", env=interest_env())
    wait_until(lambda: redis_conn.zcard(keys.claims()) == 100, timeout_s=90,
               what="the victim to claim every user")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    holders = {v.decode().split(":")[0] for v in
               redis_conn.hvals(keys.claim_meta())}
    assert len(holders) == 1 and f"-{victim.pid}-" in holders.pop()
    assert redis_conn.xlen(keys.embedded()) == 0 and redis_conn.zcard(keys.dirty()) == 0

    rescuer = EncoderWorker(configured(infra, unique, INTEREST_NO_CENTER, claim_batch=64,
                                       lease_s=30, max_wait_ms=0),
                            encoder=encoder, client=redis_conn)
    drain(rescuer, timeout_s=60)
    assert rescuer.metrics.reclaimed._value.get() == 100
    assert stream_users(redis_conn, keys) == Counter(users.keys())  # each exactly once
    version = encoder.model_version
    for uid, state in users.items():
        vec = vec_from_bytes(redis_conn.hget(keys.emb(uid), "vec"))
        assert np.allclose(vec, expected_vector(redis_conn, keys, version, state), atol=2e-3)


def test_two_workers_encode_every_dirty_mark_exactly_once(
        infra: Settings, redis_conn: redis.Redis, unique: str, encoder: Encoder,
        procs: list[subprocess.Popen], tmp_path: Path) -> None:
    keys = Keys(unique)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [spawn_worker(procs, unique, log, claim_batch=8, max_wait_ms=20,
                            env=interest_env()) for log in logs]
    wait_until(lambda: all("encoder running" in log.read_text() for log in logs), timeout_s=90,
               what="both workers to be ready")
    latest = {f"t-{i}": state_for(f"t-{i}", items=2) for i in range(90)}
    marks = interest_users(redis_conn, keys, latest)
    for version in (1, 2, 3):  # change interests while the workers are busy
        time.sleep(0.3)
        changed = {u: state_for(u, version, items=2) for u in list(latest)[version * 10:]}
        latest.update(changed)
        marks += interest_users(redis_conn, keys, changed)
    total = sum(marks.values())
    wait_until(lambda: redis_conn.xlen(keys.embedded()) >= total
               and redis_conn.zcard(keys.dirty()) + redis_conn.zcard(keys.claims()) == 0,
               timeout_s=90, what="every mark to be encoded")
    assert stream_users(redis_conn, keys) == marks
    version_ = encoder.model_version
    for uid, state in latest.items():
        vec = vec_from_bytes(redis_conn.hget(keys.emb(uid), "vec"))
        assert np.allclose(vec, expected_vector(redis_conn, keys, version_, state), atol=2e-3)

    for w in workers:
        w.send_signal(signal.SIGTERM)
    assert [w.wait(timeout=30) for w in workers] == [0, 0]
    done = []
    for log in logs:
        line = next(x for x in log.read_text().splitlines() if "encoder stopped" in x)
        done.append(int(line.split(": ")[-1].split(" users")[0]))
    assert sum(done) == total and min(done) > 0  # both took part
