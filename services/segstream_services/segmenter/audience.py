"""What the segmenter keeps for recommenders beside each user's hash: per-segment member
sets, the compacted ``segstream.assignments`` topic, and the freshness of its changes.

- **Member sets** (``Keys.seg_members(sid)``, sorted sets with score 0): a user is in the
  set of its stored segment and in no other. The writer of segment state reads the
  users' stored segment ids under the model lock (``stored_segments``), then stages
  ``ZREM old`` / ``ZADD new`` (``stage_move``) in the MULTI/EXEC that stores the model
  state; on a plain Redis the ``seg`` hash writes are in it too, so the sets move with the
  hashes or not at all (on a Redis Cluster the hashes follow from the writer's outbox:
  ``store.SegmentStateWriter.commit``); a replayed batch re-adds idempotently.
  ``recount`` derives the sets from the hashes (tests, and ``rebuild_members`` for state
  written before the sets existed).
- **Assignments topic**: every change record is also produced, with the same value, to
  the compacted topic (key = user id), so the latest record per key is the user's current
  assignment; ``tombstone`` publishes the null value that erases a forgotten user.
- **Freshness**: seconds from the event time of the user's newest event to the moment the
  change record was acknowledged by Kafka (``segstream_freshness_seconds``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, cast

import redis

from segstream.keys import Keys

SCAN_COUNT = 1_000


def stored_segments(client: redis.Redis, keys: Keys, users: Iterable[str]
                    ) -> dict[str, str | None]:
    """Each user's stored segment id (None when unassigned), in one pipelined round trip."""
    users = list(users)
    if not users:
        return {}
    pipe = client.pipeline(transaction=False)
    for uid in users:
        pipe.hget(keys.seg(uid), "segment_id")
    return {uid: (raw.decode() if raw else None)
            for uid, raw in zip(users, pipe.execute(), strict=True)}


def stage_move(pipe: Any, keys: Keys, user_id: str, old: str | None, new: str | None) -> None:
    """Queue the member-set update of one user whose stored segment goes ``old`` → ``new``
    on ``pipe`` (the MULTI pipeline that stores the segmenter state)."""
    if old and old != new:
        pipe.zrem(keys.seg_members(old), user_id)
    if new:
        pipe.zadd(keys.seg_members(new), {user_id: 0})


def stage_forget(pipe: Any, keys: Keys, user_id: str, old: str | None) -> None:
    """Queue the removal of a forgotten user from its segment's member set."""
    stage_move(pipe, keys, user_id, old, None)


def tombstone(producer: Any, topic: str, user_id: str, timeout_s: float = 30.0) -> None:
    """Publish the tombstone (null value) of a forgotten user and wait for the ack."""
    producer.send(topic, key=user_id.encode(), value=None).get(timeout=timeout_s)


def freshness_seconds(changes: Iterable[Mapping[str, Any]], last_event_ms: Mapping[str, Any],
                      published_ms: int) -> list[float]:
    """Event time of each changed user's newest event → ``published_ms``, in seconds
    (users without a known event time are left out; never negative)."""
    out = []
    for r in changes:
        last = last_event_ms.get(r["user_id"])
        if last:
            out.append(max(0.0, (published_ms - int(last)) / 1000))
    return out


def recount(client: redis.Redis, keys: Keys) -> dict[str, set[str]]:
    """Segment id → users, derived from every user's ``seg`` hash (a SCAN; for tests and
    repairs, not for the hot path)."""
    pattern = keys.seg("*")
    head, tail = pattern.split("*")
    found: dict[str, set[str]] = defaultdict(set)
    batch: list[bytes] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.hget(key, "segment_id")
        for key, sid in zip(batch, pipe.execute(), strict=True):
            k = key.decode()
            if sid and k.startswith(head) and k.endswith(tail):
                found[sid.decode()].add(k[len(head):len(k) - len(tail)])
        batch.clear()

    for key in client.scan_iter(match=pattern, count=SCAN_COUNT, _type="hash"):
        batch.append(key)
        if len(batch) >= SCAN_COUNT:
            flush()
    if batch:
        flush()
    return dict(found)


def member_sets(client: redis.Redis, keys: Keys) -> dict[str, set[str]]:
    """Segment id → users as the member sets hold them (non-empty sets only)."""
    head = keys.seg_members("")
    out: dict[str, set[str]] = {}
    for key in client.scan_iter(match=keys.seg_members("*"), count=SCAN_COUNT, _type="zset"):
        members = {m.decode() for m in cast(list[bytes], client.zrange(key, 0, -1))}
        if members:
            out[key.decode()[len(head):]] = members
    return out


def rebuild_members(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Make the member sets equal ``recount`` (state written before the sets existed, or a
    repair); call it with the segmenter stopped or holding ``Keys.seg_lock``. Returns the
    member count per segment."""
    truth = recount(client, keys)
    stale = set(member_sets(client, keys)) - set(truth)
    pipe = client.pipeline(transaction=True)
    for sid in stale:
        pipe.delete(keys.seg_members(sid))
    for sid, users in truth.items():
        pipe.delete(keys.seg_members(sid))
        ordered = sorted(users)
        for i in range(0, len(ordered), SCAN_COUNT):
            pipe.zadd(keys.seg_members(sid), dict.fromkeys(ordered[i:i + SCAN_COUNT], 0))
    pipe.execute()
    return {sid: len(users) for sid, users in truth.items()}
