"""Embedding cache in Redis keyed by (model_version, text hash), shared by all workers.

One string key per cached text (``Keys.cache_vector(model_version, text_hash)``) → float16
vector bytes, with a TTL that a hit renews (``GETEX``), so only texts that keep recurring
stay. Keys hash to their own slots; lookups and writes are non-transactional pipelines,
which Redis Cluster clients split per node.

Admission: on realistic feature texts exact repeats are rare (the benchmark measured
~0.1% hits), so storing every vector would cost ~0.9 KB per encoded text for nothing.
A text's vector is stored only once the text has recurred: when several users in one
micro-batch share it, or when a small "seen" marker (``Keys.cache_seen``, a few dozen bytes)
from an earlier sighting exists. A recurring text thus costs one extra model run; a
unique text costs a marker, not a vector.
"""

from __future__ import annotations

import numpy as np
import redis

from segstream.encoding import vec_from_bytes, vec_to_bytes
from segstream.keys import Keys


class EmbeddingCache:
    """Text-hash → embedding for one model version, with hit/miss counts."""

    def __init__(self, client: redis.Redis, keys: Keys, model_version: str, ttl_s: int
                 ) -> None:
        self.client = client
        self.keys = keys
        self.model_version = model_version
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self.stored = 0

    def key(self, thash: str) -> str:
        return self.keys.cache_vector(self.model_version, thash)

    def seen_key(self, thash: str) -> str:
        return self.keys.cache_seen(self.model_version, thash)

    def get_many(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``hashes`` (renewing their TTL)."""
        if not hashes:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for h in hashes:
            if self.ttl_s:
                pipe.getex(self.key(h), ex=self.ttl_s)
            else:
                pipe.get(self.key(h))
        found = {h: vec_from_bytes(raw) for h, raw in zip(hashes, pipe.execute(), strict=True)
                 if raw is not None}
        self.hits += len(found)
        self.misses += len(hashes) - len(found)
        return found

    def put_many(self, vectors: dict[str, np.ndarray], users: dict[str, int] | None = None
                 ) -> int:
        """Store the vectors of texts that recur (``users[h]`` ≥ 2 in this batch, or seen
        before); mark the others as seen. Returns how many vectors were stored."""
        if not vectors:
            return 0
        users = users or {}
        ex = self.ttl_s or None
        hashes = list(vectors)
        pipe = self.client.pipeline(transaction=False)
        for h in hashes:
            pipe.set(self.seen_key(h), b"1", ex=ex, get=True)
        previous = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        stored = 0
        for h, before in zip(hashes, previous, strict=True):
            if before is not None or users.get(h, 1) >= 2:
                pipe.set(self.key(h), vec_to_bytes(vectors[h]), ex=ex)
                stored += 1
        if stored:
            pipe.execute()
        self.stored += stored
        return stored

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
