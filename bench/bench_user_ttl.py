"""Bounded per-user state benchmark (prints figures; not a test).

``--users`` synthetic users (default 1,000,000) go through the real writers with a short
``redis.user_ttl_days``: ingest's Lua apply (features, dedup, titles, interest) and its
text + RFM writes (with ``--via-kafka``: the events are produced to a fresh topic and a
real ``IngestService`` consumes them), the encoder's ``emb`` write (a 384-dim float16
vector) and the segmenter's ``seg``/``seg_text`` write. It reports Redis ``used_memory``
before the load, after it and after the TTL passed (keys expire; a SCAN over the prefix
makes Redis expire what its active cycle has not reached yet), the keys left, and the
share of the loaded memory still held after expiry. The peer is the same load with
``user_ttl_days = 0`` (nothing expires): its memory after the same wait is what an
unbounded store keeps.

    .venv/bin/python bench/bench_user_ttl.py --users 1000000 --ttl-s 60
    .venv/bin/python bench/bench_user_ttl.py --users 1000000 --via-kafka --no-peer

The wait of ``--ttl-s`` starts at the end of the load, so choose a TTL longer than the
load (users loaded first expire ``--ttl-s`` after their write: with a shorter TTL the
"loaded" figures count fewer users than were written). Point ``SEGSTREAM_REDIS__PORT``
at a private ``redis-server`` for a large run: the figures are then not mixed with other
clients' writes, and the shared Redis is not filled.

Keys are written under a fresh ``bench-ttl-`` prefix and deleted at the end. The load
needs about 1.5 KB of Redis memory per user: check ``maxmemory`` before a large run.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import numpy as np
import redis

from segstream.config import Settings, load_settings
from segstream.events import Event
from segstream.feature_store import FeatureStore, PendingEvent
from segstream.feature_text import render
from segstream.features import Rfm, increments, summarize
from segstream.keys import Keys
from segstream.redis_io import redis_client
from segstream.segmentation import OnlineSegmenter
from segstream.segmentation.types import SegConfig
from segstream_services.encoder.claims import ClaimQueue
from segstream_services.segmenter import store

CHUNK = 2_000
TOPIC_CHUNK = 20_000  # users produced per round with --via-kafka
CATEGORIES = ("music/guitars", "home/coffee", "sports/running", "books/crime", "garden")


def _load(client: redis.Redis, settings: Settings, users: int, events: int,
          seed: int) -> None:
    rng = np.random.default_rng(seed)
    fs = FeatureStore(client, settings)
    keys = Keys(settings.redis.key_prefix)
    ttl = settings.redis.user_ttl_s
    queue = ClaimQueue(client, keys, "bench", user_ttl_s=ttl)
    writer = store.SegmentStateWriter(client, keys, lambda topic, records: None, "s", "c",
                                      user_ttl_s=ttl)
    model = OnlineSegmenter(SegConfig(k=2))
    base = int(time.time() * 1000) - 86_400_000
    for start in range(0, users, CHUNK):
        uids = [f"user-{i}" for i in range(start, min(users, start + CHUNK))]
        by_user: dict[str, list[PendingEvent]] = {}
        for n, uid in enumerate(uids):
            by_user[uid] = [PendingEvent(ev.event_id, increments(ev, settings.ingest), "t",
                                         0, start + n * events + e, ev.item_id, 0.15)
                            for e, ev in enumerate(_events(rng, uid, n, events, base))]
        results = fs.apply(by_user)
        updates, rfm = [], {}
        for uid, res in results.items():
            features = summarize(res.state, settings.ingest)
            updates.append((uid, render(features, settings.ingest), True))
            found = Rfm.of(res.state, features, settings.ingest)
            if found is not None:
                rfm[uid] = found
        fs.store_texts(updates, rfm)
        _downstream(client, settings, rng, uids, base, queue, writer, model,
                    {uid: text for uid, text, _ in updates})


def _events(rng: np.random.Generator, uid: str, n: int, events: int, base: int
            ) -> list[Event]:
    """User ``uid``'s ``events`` synthetic view events (one category and item each)."""
    out = []
    for e in range(events):
        cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        out.append(Event(event_id=f"{uid}-{e}", user_id=uid, ts_ms=base + e * 60_000 + n,
                         type="view", item_id=f"item-{int(rng.integers(5_000))}",
                         category=cat, title=f"{cat.split('/')[-1]} item {e}"))
    return out


def _downstream(client: redis.Redis, settings: Settings, rng: np.random.Generator,
                uids: list[str], base: int, queue: ClaimQueue,
                writer: store.SegmentStateWriter, model: OnlineSegmenter,
                texts: dict[str, str]) -> None:
    """The encoder's and the segmenter's per-user writes for ``uids``."""
    keys = Keys(settings.redis.key_prefix)
    vec = rng.normal(size=384).astype("<f2").tobytes()
    queue.write_embeddings(1, [(uid, {"vec": vec, "model_version": "bench"})
                               for uid in uids])
    writer.commit(model, base, changes=[], users={
        uid: {"segment_id": "s1", "confidence": 0.9} for uid in uids},
        texts=texts, applied=[])
    client.zrem(keys.dirty(), *uids)  # the queue is not per-user state


def _load_via_kafka(client: redis.Redis, settings: Settings, users: int, events: int,
                    seed: int) -> dict[str, float]:
    """The same users' events produced to a fresh topic and consumed by a real
    ``IngestService`` (its own group), round by round of ``TOPIC_CHUNK`` users; then the
    downstream writes. Returns the seconds spent producing and ingesting."""
    from segstream.kafka_client import TopicSpec, kafka_clients
    from segstream_services.ingest.service import IngestService

    rng = np.random.default_rng(seed)
    run = settings.redis.key_prefix
    settings = settings.model_copy(update={
        "topics": settings.topics.model_copy(update={"events": f"{run}-events",
                                                     "dlq": f"{run}-events.dlq"}),
        "ingest": settings.ingest.model_copy(update={"group_id": f"{run}-ingest",
                                                     "metrics_port": 0,
                                                     "max_poll_records": 2_000,
                                                     "redis_chunk": 2_000})})
    clients = kafka_clients(settings.kafka)
    admin = clients.admin()
    admin.create_topics([TopicSpec(settings.topics.events, 6, {}),
                         TopicSpec(settings.topics.dlq, 1, {})])
    producer = clients.producer(linger_ms=50, batch_size=1024 * 1024)
    keys = Keys(settings.redis.key_prefix)
    queue = ClaimQueue(client, keys, "bench", user_ttl_s=settings.redis.user_ttl_s)
    writer = store.SegmentStateWriter(client, keys, lambda topic, records: None, "s", "c",
                                      user_ttl_s=settings.redis.user_ttl_s)
    model = OnlineSegmenter(SegConfig(k=2))
    base = int(time.time() * 1000) - 86_400_000
    produce_s = ingest_s = 0.0
    try:
        for start in range(0, users, TOPIC_CHUNK):
            uids = [f"user-{i}" for i in range(start, min(users, start + TOPIC_CHUNK))]
            t0 = time.monotonic()
            sent = 0
            for n, uid in enumerate(uids):
                for ev in _events(rng, uid, n, events, base):
                    producer.send(settings.topics.events, json.dumps({
                        "event_id": ev.event_id, "user_id": uid, "ts": ev.ts_ms,
                        "type": ev.type, "item_id": ev.item_id, "category": ev.category,
                        "title": ev.title}).encode(), key=uid.encode())
                    sent += 1
            producer.flush()
            t1 = time.monotonic()
            stats = IngestService(settings).run(max_records=sent)
            ingest_s += time.monotonic() - t1
            produce_s += t1 - t0
            if stats.records != sent:
                raise RuntimeError(f"ingest read {stats.records} of {sent} records")
            texts = dict(zip(uids, client.mget([keys.text(u) for u in uids]), strict=True))
            _downstream(client, settings, rng, uids, base, queue, writer, model,
                        {u: t.decode() if isinstance(t, bytes) else str(t)
                         for u, t in texts.items() if t is not None})
            print(f"  {start + len(uids):,} users through Kafka + ingest "
                  f"(produce {produce_s:.0f}s, ingest {ingest_s:.0f}s), used_memory "
                  f"{_used(client) / 2**20:,.0f} MiB", flush=True)
    finally:
        producer.close()
        admin.delete_topics([settings.topics.events, settings.topics.dlq])
        admin.close()
    return {"produce_s": produce_s, "ingest_s": ingest_s}


def _count(client: redis.Redis, prefix: str) -> int:
    """Keys under ``prefix`` (a SCAN, which also expires the ones past their TTL)."""
    return sum(1 for _ in client.scan_iter(match=f"{prefix}:u:*", count=10_000))


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run(settings: Settings, users: int, events: int, ttl_s: int, seed: int,
        via_kafka: bool = False) -> dict[str, Any]:
    client = redis_client(settings.redis)
    prefix = settings.redis.key_prefix
    timings: dict[str, float] = {}
    try:
        before = _used(client)
        t0 = time.monotonic()
        if via_kafka:
            timings = _load_via_kafka(client, settings, users, events, seed)
        else:
            _load(client, settings, users, events, seed)
        load_s = time.monotonic() - t0
        loaded, keys_loaded = _used(client), _count(client, prefix)
        time.sleep(ttl_s + 1)  # the last keys were written at the end of the load
        t1 = time.monotonic()
        left = _count(client, prefix)
        after = _used(client)
        return {"users": users, "load_s": load_s, "keys_loaded": keys_loaded,
                "keys_left": left, "expire_scan_s": time.monotonic() - t1,
                "before": before, "loaded": loaded, "after": after, **timings}
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=10_000):
            client.delete(key)
        for key in client.scan_iter(match=f"{{{prefix}:*", count=10_000):
            client.delete(key)
        client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=3, help="events per user (3)")
    p.add_argument("--ttl-s", type=int, default=60, help="user TTL in seconds (60)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-peer", action="store_true", help="skip the TTL-0 peer run")
    p.add_argument("--via-kafka", action="store_true",
                   help="produce the events to a topic and run a real IngestService on it")
    args = p.parse_args()
    runs = [("ttl", args.ttl_s)] + ([] if args.no_peer else [("peer: no ttl", 0)])
    for name, ttl in runs:
        settings = load_settings()
        settings.redis.key_prefix = f"bench-ttl-{uuid.uuid4().hex[:8]}"
        settings.redis.user_ttl_days = ttl / 86_400
        r = run(settings, args.users, args.events, args.ttl_s, args.seed, args.via_kafka)
        grown = max(1, r["loaded"] - r["before"])
        kept = max(0, r["after"] - r["before"])
        print(f"{name:>12}: {r['users']:,} users in {r['load_s']:.1f}s, "
              f"{r['keys_loaded']:,} per-user keys, {grown / r['users']:.0f} B/user loaded; "
              f"after {args.ttl_s}s: {r['keys_left']:,} keys left, "
              f"used_memory +{grown / 2**20:.1f} MiB -> +{kept / 2**20:.1f} MiB "
              f"({kept / grown:.1%} of the load kept; expiry scan {r['expire_scan_s']:.1f}s)"
              + (f"; Kafka: produce {r['produce_s']:.0f}s, ingest {r['ingest_s']:.0f}s "
                 f"({args.users * args.events / r['ingest_s']:,.0f} events/s)"
                 if "ingest_s" in r else ""), flush=True)


if __name__ == "__main__":
    main()
