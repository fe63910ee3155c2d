"""Segment state written through the Redis key contract, as the segmenter stores it: one
family with two segments, each user's ``seg`` hash, and the per-segment member sets.

For the read-surface tests (API, export) that need many members without running the
clusterer on thousands of users; the segmenter's own writes are tested in test_client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import jsonschema
import redis

from segstream.client_models import load_schema
from segstream.keys import Keys

NOW = "2026-01-02T03:04:05.000Z"


def catalog_entry(sid: str, tier: int, path: list[str], label: str, size: int,
                  children: list[str]) -> dict[str, Any]:
    entry = {
        "schema_version": 1, "segment_id": sid, "tier": tier, "tier_path": path,
        "status": "active", "label": label, "description": f"{label} and more",
        "top_terms": label.split(" / "), "size": size, "children": children,
        "centroids_version": 3, "model_version": "test-model@1",
        "lineage": {"born_at": NOW, "origin": "family" if tier == 1 else "cold-start",
                    "parents": [], "split_from": None, "merged_into": None,
                    "retired_at": None},
        "updated_at": NOW,
    }
    jsonschema.validate(entry, load_schema("catalog_entry"))
    return entry


def write_state(client: redis.Redis, prefix: str, members: dict[str, Iterable[str]]) -> None:
    """Catalog f1 > (s1 "guitars / amps", s2 "espresso / grinders") and the given users
    per segment (``{"s1": [...], "s2": [...]}``), in chunks."""
    keys = Keys(prefix)
    labels = {"s1": "guitars / amps", "s2": "espresso / grinders"}
    entries = [catalog_entry("f1", 1, ["f1"], "music and coffee", 0, ["s1", "s2"])]
    entries += [catalog_entry(s, 2, ["f1", s], labels[s], 10, []) for s in ("s1", "s2")]
    client.hset(keys.seg_catalog(), mapping={e["segment_id"]: json.dumps(e) for e in entries})
    now = int(time.time() * 1000)
    for sid, users in members.items():
        other = "s2" if sid == "s1" else "s1"
        chunk: list[str] = []
        for uid in [*users, None]:
            if uid is not None:
                chunk.append(uid)
            if chunk and (uid is None or len(chunk) == 1000):
                pipe = client.pipeline(transaction=False)
                for u in chunk:
                    pipe.hset(keys.seg(u), mapping={
                        "segment_id": sid, "confidence": 0.8,
                        "memberships": json.dumps([[sid, 0.8], [other, 0.2]]),
                        "tier_path": json.dumps(["f1", sid]), "engagement": "active",
                        "model_version": "test-model@1", "centroids_version": 3,
                        "assigned_ms": now})
                pipe.zadd(keys.seg_members(sid), dict.fromkeys(chunk, 0))
                pipe.execute()
                chunk = []
