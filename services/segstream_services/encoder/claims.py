"""Leased claims on the dirty-user queue, as Lua scripts (atomic, Redis Cluster–safe).

Keys (all in the ``{<prefix>:q}`` hash slot, see ``segstream.keys.Keys``):

- ``dirty``      zset  user → ms of the first unclaimed dirty mark (ingest ``ZADD NX``)
- ``claims``     zset  user → lease deadline ms (server clock)
- ``claim_meta`` hash  user → ``<token>|<dirty_ms>`` (who holds the claim, which mark)
- ``fence``      counter; every claim call takes the next value
- ``embedded``   stream, one entry per completed claim (the segmenter's input; its
                 fields are ``segstream.stream_entry.EmbeddedEntry``)

A claim call first returns expired leases to ``dirty`` (keeping the earlier mark). Users
that a live claim holds are not eligible: a user re-marked while claimed waits in
``dirty`` until that claim ends, so one user is never encoded by two workers at once.
Then — only if ``batch`` users are eligible or the oldest eligible mark is
``max_wait_ms`` old — it moves up to ``batch`` of them, oldest first, into ``claims``
under a fresh token ``<worker>:<fence>``.

``complete`` appends the stream entries (never trimming: see ``ClaimQueue.complete``) and
releases the claims in one step, only for claims the token still holds: a worker whose
lease expired (and whose users another worker re-claimed) completes nothing, so every
dirty mark yields exactly one entry. ``give_back`` ends the leases of a batch that failed
(e.g. on a Redis outage), so its users return to ``dirty`` at the next claim call instead
of after the lease. The fence also guards the per-user embedding write
(``EMB_WRITE``): a write from an older claim never overwrites one from a newer claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from segstream import redis_scripts
from segstream.keys import Keys
from segstream.stream_entry import FIELDS, EmbeddedEntry

CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local batch, max_wait, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, uid in ipairs(expired) do
  local meta = redis.call('HGET', KEYS[3], uid)
  local mark = meta and string.match(meta, '|([^|]+)$') or tostring(now)
  local cur = redis.call('ZSCORE', KEYS[1], uid)
  if (not cur) or tonumber(cur) > tonumber(mark) then
    redis.call('ZADD', KEYS[1], mark, uid)
  end
  redis.call('ZREM', KEYS[2], uid)
  redis.call('HDEL', KEYS[3], uid)
end
local cand = redis.call('ZRANGE', KEYS[1], 0, batch + redis.call('ZCARD', KEYS[2]) - 1,
                        'WITHSCORES')
local pick = {}
for i = 1, #cand, 2 do
  if #pick >= 2 * batch then break end
  if not redis.call('ZSCORE', KEYS[2], cand[i]) then
    pick[#pick + 1] = cand[i]
    pick[#pick + 1] = cand[i + 1]
  end
end
if #pick == 0 then return {0, #expired, -1} end
local age = now - tonumber(pick[2])
if #pick < 2 * batch and age < max_wait then return {0, #expired, max_wait - age} end
local fence = redis.call('INCR', KEYS[4])
local token = ARGV[4] .. ':' .. fence
local deadline = now + lease
local out = {fence, #expired, 0}
for i = 1, #pick, 2 do
  redis.call('ZREM', KEYS[1], pick[i])
  redis.call('ZADD', KEYS[2], deadline, pick[i])
  redis.call('HSET', KEYS[3], pick[i], token .. '|' .. pick[i + 1])
  out[#out + 1] = pick[i]
  out[#out + 1] = pick[i + 1]
end
return out
"""

COMPLETE = """
local token = ARGV[1] .. '|'
local width, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local done, lost = 0, 0
local function held(uid)
  local meta = redis.call('HGET', KEYS[2], uid)
  if meta and string.sub(meta, 1, #token) == token then return true end
  lost = lost + 1
  return false
end
local function release(uid)
  redis.call('ZREM', KEYS[1], uid)
  redis.call('HDEL', KEYS[2], uid)
  done = done + 1
end
local i = 4
for _ = 1, n do
  local uid = ARGV[i + 1]
  if held(uid) then
    redis.call('XADD', KEYS[3], '*', unpack(ARGV, i, i + width - 1))
    release(uid)
  end
  i = i + width
end
for j = i, #ARGV do
  if held(ARGV[j]) then release(ARGV[j]) end
end
return {done, lost}
"""

GIVE_BACK = """
local token = ARGV[1] .. '|'
local n = 0
for j = 2, #ARGV do
  local meta = redis.call('HGET', KEYS[2], ARGV[j])
  if meta and string.sub(meta, 1, #token) == token then
    redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[j])
    n = n + 1
  end
end
return n
"""

EMB_WRITE = """
local cur = redis.call('HGET', KEYS[1], 'fence')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], unpack(ARGV, 3))
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


@dataclass
class Claim:
    """One claim call's result: the users now held under ``token`` and their mark times."""

    fence: int
    token: str
    users: list[tuple[str, int]] = field(default_factory=list)
    reclaimed: int = 0
    wait_ms: int = -1  # not ready: ms until the max-wait trigger (-1: queue empty)


class ClaimQueue:
    """The encoder's side of the dirty queue: claim, write embeddings, complete."""

    def __init__(self, client: redis.Redis, keys: Keys, worker_id: str,
                 user_ttl_s: int = 0) -> None:
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.user_ttl_s = user_ttl_s  # the TTL of each ``emb`` written (0: none)
        self._claim = client.register_script(CLAIM)
        self._complete = client.register_script(COMPLETE)
        self._emb_write = client.register_script(EMB_WRITE)
        self._give_back = client.register_script(GIVE_BACK)
        self._queue_keys = [keys.dirty(), keys.claims(), keys.claim_meta(), keys.fence()]

    def claim(self, batch: int, max_wait_ms: int, lease_ms: int) -> Claim:
        """Reclaim expired leases, then claim up to ``batch`` users if a trigger fired."""
        raw = self._claim(keys=self._queue_keys,
                          args=[batch, max_wait_ms, lease_ms, self.worker_id])
        fence, reclaimed, wait_ms = int(raw[0]), int(raw[1]), int(raw[2])
        users = [(raw[i].decode(), int(float(raw[i + 1]))) for i in range(3, len(raw), 2)]
        return Claim(fence, f"{self.worker_id}:{fence}", users, reclaimed, wait_ms)

    def write_embeddings(self, fence: int,
                         rows: list[tuple[str, dict[str, bytes | str | int]]]) -> int:
        """Store (user, {field: value}) rows into the users' ``emb`` hashes (e.g. ``vec``,
        ``model_version``, ``vec_hash``, ``encoded_ms``) unless a newer claim already wrote
        that user; returns how many writes a newer one blocked."""
        calls = redis_scripts.ScriptCalls(self.client)
        for uid, fields in rows:
            calls.add(self._emb_write, [self.keys.emb(uid)],
                      [fence, self.user_ttl_s,
                       *(part for item in fields.items() for part in item)])
        return sum(1 for ok in calls.execute() if not ok)

    def complete(self, token: str, entries: list[EmbeddedEntry],
                 release: list[str] | None = None) -> tuple[int, int]:
        """For the claims ``token`` still holds: append each entry to the stream and release
        its user, and release the ``release`` users without an entry → (done, lost).

        The stream is never trimmed here: the segmenter trims what its group acknowledged,
        and the worker stops claiming while the stream is over ``encoder.stream_maxlen``
        (``QueueWatch.stream_full``), so a slow or stopped segmenter loses nothing."""
        release = release or []
        if not entries and not release:
            return 0, 0
        args: list[str | int] = [token, 2 * len(FIELDS), len(entries)]
        for entry in entries:
            args += entry.xadd_args()
        args += release
        keys = [self.keys.claims(), self.keys.claim_meta(), self.keys.embedded()]
        ok, lost = self._complete(keys=keys, args=args)
        return int(ok), int(lost)

    def give_back(self, claim: Claim) -> int:
        """End the leases ``claim`` still holds now (a batch that failed, e.g. on a Redis
        outage), so the next claim call returns its users to ``dirty`` with their marks
        instead of after ``lease_s``; returns how many."""
        if not claim.users:
            return 0
        return int(self._give_back(keys=[self.keys.claims(), self.keys.claim_meta()],
                                   args=[claim.token, *(uid for uid, _ in claim.users)]))

    def stream_length(self) -> int:
        """Entries in the ``embedded`` stream (acknowledged ones included until trimmed)."""
        return int(self.client.xlen(self.keys.embedded()))

    def depth(self) -> tuple[int, int, float]:
        """(dirty users, claimed users, age in seconds of the oldest dirty mark)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.dirty())
        pipe.zcard(self.keys.claims())
        pipe.zrange(self.keys.dirty(), 0, 0, withscores=True)
        dirty, claimed, oldest = pipe.execute()
        sec, usec = self.client.time()  # not pipelined: a cluster pipeline refuses TIME
        now_ms = sec * 1000 + usec // 1000
        age = max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0.0
        return int(dirty), int(claimed), age
