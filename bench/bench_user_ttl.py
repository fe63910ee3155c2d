"""Bounded per-user state benchmark (prints figures; not a test).

``--users`` synthetic users (default 1,000,000) go through the real writers with a short
``redis.user_ttl_days``: ingest's Lua apply (features, dedup, titles, interest) and its
text + RFM writes, the encoder's ``emb`` write (a 384-dim float16 vector) and the
segmenter's ``seg``/``seg_text`` write. It reports Redis ``used_memory`` before the load,
after it and after the TTL passed (keys expire; a SCAN over the prefix makes Redis
expire what its active cycle has not reached yet), the keys left, and the share of the
loaded memory still held after expiry. The peer is the same load with ``user_ttl_days = 0``
(nothing expires): its memory after the same wait is what an unbounded store keeps.

    .venv/bin/python bench/bench_user_ttl.py --users 1000000 --ttl-s 60

Keys are written under a fresh ``bench-ttl-`` prefix and deleted at the end. The load
needs about 1.5 KB of Redis memory per user: check ``maxmemory`` before a large run.
"""

from __future__ import annotations

import argparse
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
            evs = []
            for e in range(events):
                cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
                ev = Event(event_id=f"{uid}-{e}", user_id=uid, ts_ms=base + e * 60_000 + n,
                           type="view", item_id=f"item-{int(rng.integers(5_000))}",
                           category=cat, title=f"{cat.split('/')[-1]} item {e}")
                evs.append(PendingEvent(ev.event_id, increments(ev, settings.ingest), "t",
                                        0, start + n * events + e, ev.item_id, 0.15))
            by_user[uid] = evs
        results = fs.apply(by_user)
        updates, rfm = [], {}
        for uid, res in results.items():
            features = summarize(res.state, settings.ingest)
            updates.append((uid, render(features, settings.ingest), True))
            found = Rfm.of(res.state, features, settings.ingest)
            if found is not None:
                rfm[uid] = found
        fs.store_texts(updates, rfm)
        vec = rng.normal(size=384).astype("<f2").tobytes()
        queue.write_embeddings(1, [(uid, {"vec": vec, "model_version": "bench"})
                                   for uid in uids])
        writer.commit(model, base, changes=[], users={
            uid: {"segment_id": "s1", "confidence": 0.9} for uid in uids},
            texts={uid: text for uid, text, _ in updates}, applied=[])
        client.zrem(keys.dirty(), *uids)  # the queue is not per-user state


def _count(client: redis.Redis, prefix: str) -> int:
    """Keys under ``prefix`` (a SCAN, which also expires the ones past their TTL)."""
    return sum(1 for _ in client.scan_iter(match=f"{prefix}:u:*", count=10_000))


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run(settings: Settings, users: int, events: int, ttl_s: int, seed: int) -> dict[str, Any]:
    client = redis_client(settings.redis)
    prefix = settings.redis.key_prefix
    try:
        before = _used(client)
        t0 = time.monotonic()
        _load(client, settings, users, events, seed)
        load_s = time.monotonic() - t0
        loaded, keys_loaded = _used(client), _count(client, prefix)
        time.sleep(ttl_s + 1)  # the last keys were written at the end of the load
        t1 = time.monotonic()
        left = _count(client, prefix)
        after = _used(client)
        return {"users": users, "load_s": load_s, "keys_loaded": keys_loaded,
                "keys_left": left, "expire_scan_s": time.monotonic() - t1,
                "before": before, "loaded": loaded, "after": after}
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
    args = p.parse_args()
    runs = [("ttl", args.ttl_s)] + ([] if args.no_peer else [("peer: no ttl", 0)])
    for name, ttl in runs:
        settings = load_settings()
        settings.redis.key_prefix = f"bench-ttl-{uuid.uuid4().hex[:8]}"
        settings.redis.user_ttl_days = ttl / 86_400
        r = run(settings, args.users, args.events, args.ttl_s, args.seed)
        grown = max(1, r["loaded"] - r["before"])
        kept = max(0, r["after"] - r["before"])
        print(f"{name:>12}: {r['users']:,} users in {r['load_s']:.1f}s, "
              f"{r['keys_loaded']:,} per-user keys, {grown / r['users']:.0f} B/user loaded; "
              f"after {args.ttl_s}s: {r['keys_left']:,} keys left, "
              f"used_memory +{grown / 2**20:.1f} MiB -> +{kept / 2**20:.1f} MiB "
              f"({kept / grown:.1%} of the load kept; expiry scan {r['expire_scan_s']:.1f}s)")


if __name__ == "__main__":
    main()
