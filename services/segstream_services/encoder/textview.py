"""The feature-text view: each user's readable profile embedded, coalesced and rate-limited.

The interest path (``service``) never runs the transformer on a user's text. When it
sees that a user's stored text differs from the one embedded in ``emb(uid)``
(``text_hash``, ``text_model``), it queues the user in ``Keys.text_due`` with the time
the text may next be embedded: ``text_ms + text_min_interval_s`` (``ZADD NX``: a user
queued already keeps its slot, and every later change of the text is coalesced into
that one embedding). Between two claims the worker takes at most ``text_batch`` due
users (``step``), embeds their current texts (the text cache serves recurring texts),
writes the view's fields (``text_vec`` float16, ``text_hash``, ``text_model``,
``text_ms``) and marks the users dirty, so that the next claim recombines their vector
(no transformer pass then). With a text view weight of 0 none of this runs.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import redis

from segstream.encoding import Encoder, text_hash, vec_to_bytes
from segstream.keys import Keys
from segstream_services.encoder.cache import EmbeddingCache

# Take up to ARGV[1] due users, leased: each stays queued with its time moved ARGV[2] ms
# ahead, so a worker that dies before writing their vectors leaves them to another worker;
# ``step`` removes them once written.
TAKE_DUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, user in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), user) end
return due
"""


class TextView:
    """Queue and embed users' feature texts under one encoder."""

    def __init__(self, client: redis.Redis, keys: Keys, encoder: Encoder,
                 cache: EmbeddingCache | None, min_interval_s: float, batch: int,
                 lease_s: float = 60.0) -> None:
        self.client = client
        self.keys = keys
        self.encoder = encoder
        self.cache = cache
        self.min_interval_ms = int(min_interval_s * 1000)
        self.batch = batch
        self.lease_ms = int(lease_s * 1000)
        self.counts: Counter[str] = Counter()
        self._take = client.register_script(TAKE_DUE)

    def due_at(self, text_ms: int | None, now_ms: int) -> int:
        """When a user whose text was last embedded at ``text_ms`` may be embedded again."""
        return now_ms if text_ms is None else max(now_ms, text_ms + self.min_interval_ms)

    def queue(self, due: dict[str, int]) -> None:
        """Queue users (user → due ms); users already queued keep their time."""
        if due:
            self.client.zadd(self.keys.text_due(), due, nx=True)

    def take(self) -> list[str]:
        """Lease up to ``batch`` due users (they stay queued ``lease_s`` ahead until written:
        a worker that dies holding them leaves them to another)."""
        return [u.decode() for u in self._take(keys=[self.keys.text_due()],
                                               args=[self.batch, self.lease_ms])]

    def step(self) -> int:
        """Embed up to ``batch`` due users' texts; returns how many texts were embedded."""
        users = self.take()
        if not users:
            return 0
        version = self.encoder.model_version
        pipe = self.client.pipeline(transaction=False)
        for uid in users:
            pipe.get(self.keys.text(uid))
            pipe.hmget(self.keys.emb(uid), ["text_hash", "text_model"])
        got = pipe.execute()
        texts: dict[str, str] = {}
        todo: dict[str, str] = {}  # uid → text hash
        for i, uid in enumerate(users):
            raw, (old_hash, old_model) = got[2 * i], got[2 * i + 1]
            if raw is None:
                self.counts["text_missing"] += 1
                continue
            text = raw.decode("utf-8", errors="replace")
            thash = text_hash(text)
            if old_hash == thash.encode() and old_model == version.encode():
                self.counts["text_unchanged"] += 1
                continue
            todo[uid] = thash
            texts.setdefault(thash, text)
        if not todo:
            self.client.zrem(self.keys.text_due(), *users)
            return 0
        vectors = self._vectors(texts, Counter(todo.values()))
        now_ms = time.time_ns() // 1_000_000
        pipe = self.client.pipeline(transaction=False)
        for uid, thash in todo.items():
            pipe.hset(self.keys.emb(uid), mapping={
                "text_vec": vec_to_bytes(vectors[thash]), "text_hash": thash,
                "text_model": version, "text_ms": now_ms})
        pipe.zadd(self.keys.dirty(), dict.fromkeys(todo, now_ms), nx=True)
        pipe.zrem(self.keys.text_due(), *users)  # written: the lease ends
        pipe.execute()
        self.counts["text_embedded"] += len(todo)
        return len(todo)

    def _vectors(self, texts: dict[str, str], users: Counter[str]) -> dict[str, np.ndarray]:
        found = self.cache.get_many(list(texts)) if self.cache else {}
        missing = [h for h in texts if h not in found]
        if missing:
            fresh = dict(zip(missing, self.encoder.encode([texts[h] for h in missing]),
                             strict=True))
            if self.cache:
                self.cache.put_many(fresh, users)
            found.update(fresh)
            self.counts["text_encoded"] += len(missing)
        return found
