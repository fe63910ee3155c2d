"""The segmenter's state in Redis and its one writer (used by the segmenter and rollout).

Keys (``segstream.keys.Keys``; the segmenter-wide keys share the ``{<prefix>:seg}`` hash
tag, the per-user ones the user's tag):

- ``seg_state()``   hash: ``model`` (zlib-compressed JSON of ``OnlineSegmenter.to_dict``),
                    ``rev`` (+1 per write: other consumers reload when it moved),
                    ``version`` (centroids version), ``applied`` (JSON list of the most
                    recent stream entry ids whose effect is in ``model``), ``fence``
                    (rises with every write), ``outbox`` and ``outbox_id`` (the last
                    stored batch's records, on a cluster also its per-user writes, until
                    they are published: see ``SegmentStateWriter.commit``)
- ``seg_catalog()`` hash: segment or family id -> current catalog entry (JSON)
- ``seg_lock()``    string: the lease that serialises writers (consumers and rollout)
- ``seg_members(sid)`` sorted set: the users whose stored segment is ``sid``
- ``seg(uid)``      hash: segment_id, confidence, memberships, tier_path, text_hash,
                    model_version, centroids_version, assigned_ms, engagement,
                    first_seen_ms, last_active_ms, frequency, monetary, fence (short
                    values only, so Redis keeps it as a compact listpack)
- ``seg_text(uid)`` string: the feature text at the user's last segment change (the
                    next change record lists the sentences that changed since)

Every key of the first four shares one hash slot, the two per-user keys the user's slot,
so on a Redis Cluster each transaction and script stays within one slot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import redis

from segstream import crashpoints, redis_scripts
from segstream.config import Settings
from segstream.errors import DataError, InfraError
from segstream.features import Rfm
from segstream.keys import Keys
from segstream.records import catalog_entries
from segstream.redis_io import hash_fields
from segstream.segmentation import Assignment, OnlineSegmenter, SegConfig
from segstream.segmentation.engagement import EngagementThresholds, engagement_tier
from segstream.state_epoch import StateEpoch
from segstream_services.segmenter import audience

log = logging.getLogger(__name__)
APPLIED_KEEP = 4096
OUTBOX, OUTBOX_ID, FENCE = "outbox", "outbox_id", "fence"
LOST_LOCK = "lost the segmenter model lock mid-batch; batch will be replayed"
# delete the outbox only when it is still the one this writer stored (ARGV[1])
_CLEAR_OUTBOX = """
if redis.call('HGET', KEYS[1], 'outbox_id') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'outbox', 'outbox_id')
end
return 0
"""
# one user's segment writes (step 4 of ``commit``), unless a newer writer was there.
# KEYS: seg, seg_text; ARGV: fence, TTL s (0: none), "1" to set seg_text, text, then
# field, value pairs of the seg hash
_WRITE_USER = """
if tonumber(redis.call('HGET', KEYS[1], 'fence') or '0') > tonumber(ARGV[1]) then
  return 0
end
local ttl = tonumber(ARGV[2])
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
redis.call('HSET', KEYS[1], 'fence', ARGV[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
if ARGV[3] == '1' then
  if ttl > 0 then redis.call('SET', KEYS[2], ARGV[4], 'EX', ttl)
  else redis.call('SET', KEYS[2], ARGV[4]) end
end
return 1
"""
Records = list[tuple[str, dict[str, Any]]]
Publish = Callable[[str, Records], None]  # send to a topic and wait for every ack


def encode_model(model: OnlineSegmenter) -> bytes:
    return zlib.compress(json.dumps(model.to_dict(), separators=(",", ":")).encode(), 3)


def decode_model(raw: bytes | str) -> OnlineSegmenter:
    if not isinstance(raw, bytes):
        raise DataError("the stored segmenter state is not binary")
    return OnlineSegmenter.from_dict(json.loads(zlib.decompress(raw)))


def read_rev(client: redis.Redis, keys: Keys) -> int:
    raw = client.hget(keys.seg_state(), "rev")
    return int(raw) if raw else 0


def read_state(client: redis.Redis, keys: Keys) -> tuple[OnlineSegmenter | None, int,
                                                          list[str]]:
    """The stored model (None before the first write), its revision and applied ids."""
    raw = client.hmget(keys.seg_state(), ["model", "rev", "applied"])
    if raw[0] is None:
        return None, 0, []
    return decode_model(raw[0]), int(raw[1] or 0), json.loads(raw[2] or b"[]")


def thresholds(settings: Settings) -> EngagementThresholds:
    s = settings.segmenter
    return EngagementThresholds(s.new_days, s.at_risk_days, s.dormant_days, s.loyal_frequency,
                                s.loyal_spend or float("inf"))


def engagement(seg: dict[str, str], rfm: Rfm | None, settings: Settings, now_ms: int
               ) -> str | None:
    """A user's engagement tier now: from ingest's event-time RFM (``Keys.rfm``) when it
    has published one, else what the segmenter stored at the last assignment."""
    if rfm is None:
        return seg.get("engagement")
    first = min(int(seg.get("first_seen_ms") or rfm.first_event_ms), rfm.first_event_ms)
    return engagement_tier(first, rfm.last_active_ms, rfm.frequency, now_ms, rfm.monetary,
                           thresholds(settings))


def decode_hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def stored_states(client: redis.Redis, keys: Keys, users: list[str], model_version: str
                  ) -> dict[str, dict[str, Any]]:
    """The per-user state of ``users`` from their stored ``seg`` hashes, as a batch starts
    it for a user without a new vector (its last activity stands for the event time)."""
    if not users:
        return {}
    pipe = client.pipeline(transaction=False)
    for uid in users:
        pipe.hgetall(keys.seg(uid))
    out = {}
    for uid, raw in zip(users, pipe.execute(), strict=True):
        seg = decode_hash(raw)
        last = int(seg.get("last_active_ms") or time.time() * 1000)
        out[uid] = {**seg, "event_ms": last, "last_active_ms": last,
                    "first_seen_ms": int(seg.get("first_seen_ms") or last),
                    "frequency": int(seg.get("frequency") or 1), "model_version": model_version}
    return out


def assignment_fields(a: Assignment, centroids_version: int, now_ms: int) -> dict[str, Any]:
    """The ``seg(uid)`` fields an assignment sets (the caller adds its own)."""
    return {"segment_id": a.segment_id, "confidence": round(a.confidence, 6),
            "memberships": json.dumps([[s, round(w, 4)] for s, w in a.memberships],
                                      separators=(",", ":")),
            "tier_path": json.dumps(a.tier_path, separators=(",", ":")),
            "centroids_version": centroids_version, "assigned_ms": now_ms}


class SegmentStateWriter:
    """The one writer of segment state: users' segment hashes, the member sets, the model
    state and the catalog in Redis, and the change and catalog records on Kafka. The
    segmenter loop and model rollout both write through ``commit``, under ``lock``."""

    def __init__(self, client: redis.Redis, keys: Keys, publish: Publish,
                 segments_topic: str, catalog_topic: str,
                 assignments_topic: str | None = None, user_ttl_s: int = 0) -> None:
        self.client = client
        self.user_ttl_s = user_ttl_s  # TTL of the ``seg``/``seg_text`` keys written (0: none)
        self.keys = keys
        self.publish = publish
        self.segments_topic = segments_topic
        self.catalog_topic = catalog_topic
        self.assignments_topic = assignments_topic
        self._write_user = client.register_script(_WRITE_USER)
        # a plain Redis writes the users in the state's MULTI/EXEC; a cluster cannot
        self.users_in_multi = not redis_scripts.is_cluster(client)

    @contextlib.contextmanager
    def lock(self, ttl_s: float) -> Iterator[Any]:
        """Hold the lease that serialises writers (waits up to ``2 * ttl_s`` for it)."""
        lock = self.client.lock(self.keys.seg_lock(), timeout=ttl_s,
                                blocking_timeout=ttl_s * 2)
        if not lock.acquire():
            raise InfraError("could not take the segmenter model lock")
        try:
            yield lock
        finally:
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()

    def recover(self) -> int:
        """Finish the outbox a writer left behind (it stored a batch, then died or lost its
        lock before clearing it): apply its per-user writes (a cluster's), publish its
        records and clear it; call under ``lock``. Returns the number of records published."""
        raw = self.client.hmget(self.keys.seg_state(), [OUTBOX, OUTBOX_ID])
        if raw[0] is None:
            return 0
        box = json.loads(zlib.decompress(cast(bytes, raw[0])))  # bytes replies
        self._write_users(box)
        self._publish_box(box)
        self._clear(raw[1] or b"")
        return sum(len(box[k]) for k in ("changes", "catalog"))

    def _write_users(self, box: dict[str, Any]) -> None:
        """Each user's ``seg`` fields and ``seg_text`` from ``box`` (a cluster's outbox):
        one script call per user, on the user's slot, skipped when the user's hash holds a
        newer fence."""
        users, texts = box.get("users", {}), box.get("texts", {})
        if not users and not texts:
            return
        calls = redis_scripts.ScriptCalls(self.client)
        for uid in dict.fromkeys([*users, *texts]):
            fields = [x for k, v in users.get(uid, {}).items() if k != FENCE
                      for x in (k, v)]
            text = texts.get(uid)
            calls.add(self._write_user, [self.keys.seg(uid), self.keys.seg_text(uid)],
                      [box["fence"], self.user_ttl_s, "" if text is None else "1",
                       text or "", *fields])
        calls.execute()

    def _stage_users(self, pipe: Any, box: dict[str, Any], users: dict[str, dict[str, Any]],
                     texts: dict[str, str]) -> None:
        """Queue the per-user writes: in the MULTI ``pipe`` on a plain Redis, else into
        ``box`` (the outbox) for step 4."""
        if not self.users_in_multi:
            box["users"] = {uid: hash_fields(f) for uid, f in users.items()}
            box["texts"] = texts
            return
        for uid, fields in users.items():
            pipe.hset(self.keys.seg(uid), mapping={**hash_fields(fields), FENCE: box["fence"]})
            if self.user_ttl_s:
                pipe.expire(self.keys.seg(uid), self.user_ttl_s)
        for uid, text in texts.items():
            pipe.set(self.keys.seg_text(uid), text, ex=self.user_ttl_s or None)

    def _publish_box(self, box: dict[str, Any]) -> None:
        changes = [(k, v) for k, v in box["changes"]]
        self.publish(self.segments_topic, changes)
        if self.assignments_topic:
            self.publish(self.assignments_topic, changes)  # the latest per user: current
        self.publish(self.catalog_topic, [(k, v) for k, v in box["catalog"]])

    def _clear(self, box_id: bytes | str) -> None:
        self.client.eval(_CLEAR_OUTBOX, 1, self.keys.seg_state(), box_id)

    def commit(self, model: OnlineSegmenter, now_ms: int, *, changes: Records,
               users: dict[str, dict[str, Any]], texts: dict[str, str], applied: list[str],
               lock: Any = None,
               select_catalog: Callable[[dict[str, dict[str, Any]]], Records] | None = None,
               extra: Callable[[Any], None] | None = None) -> int:
        """Write one batch's effect, in this order; returns the new state revision.

        1. Finish the outbox an earlier writer may have left (``recover``), so users'
           writes land and records leave in the order their states were stored.
        2. ``WATCH`` the lock and state keys and check that the lock still holds
           ``lock``'s token (when given); raise ``InfraError`` if not. The new fence is
           ``max(now, stored fence + 1)`` in ms: it rises with every write, also across
           writers whose clocks differ, and starts above every earlier one when Redis
           lost the state (barring a clock that went back).
        3. In one MULTI/EXEC (aborted, with ``InfraError``, if the lock or state key
           changed since 2): the **per-user writes** — each user's ``seg(uid)`` fields
           (``users``; HSET merges into what is stored) with the fence, ``seg_text(uid)``
           for ``texts`` (both with ``user_ttl_s``) — and each user's move between member
           sets (``audience``), the caller's ``extra`` commands (rollout: vector
           rotation; the segmenter: pruned catalog entries), every catalog entry of
           ``model``, the model state with ``applied``, ``rev`` + 1, the fence, and the
           **outbox**: this batch's change records and the catalog entries
           ``select_catalog`` picks (default: all), with a fresh id. On a Redis Cluster
           this MULTI/EXEC stays in the segmenter's slot: the per-user writes go into the
           outbox instead, for step 4.
        4. (Redis Cluster) Apply the outbox's per-user writes: per user, one script on
           the user's slot sets the fields and the fence, ``seg_text`` and the TTLs,
           unless the user's hash already holds a newer fence (a later writer was there:
           this one lost its lock after 3); repeating it is harmless. On a plain Redis
           the outbox holds none: 3 wrote them.
        5. Publish the outbox: the change records to the segments topic and the compacted
           assignments topic, then the catalog entries; wait for every ack.
        6. Clear the outbox (only if it still holds this batch's id).

        A crash before 3 leaves Redis and Kafka as they were: the caller replays the batch.
        A crash after 3 (or a failed write in 4 or publish in 5) leaves the state and its
        outbox stored: the next writer — any segmenter consumer on its next batch, or
        rollout — applies and publishes the outbox in step 1 (or ``recover``) before
        anything newer (on a cluster the users' hashes thus catch up with the model and
        the member sets), so subscribers never hold a change the segmenter did not store,
        and get every stored change at least once, in order (records are keyed by user id
        and carry the full assignment, so a repeat is idempotent). A crash after 5 and
        before 6 publishes the batch twice. On a plain Redis the member sets always agree
        with the hashes; on a cluster a user's member set is ahead of its hash from 3
        until 4 (or its replay) ran.
        """
        crashpoints.reached("segmenter", 1)
        self.recover()                                                          # 1
        crashpoints.reached("segmenter", 2)
        entries = catalog_entries(model, now_ms)
        old = audience.stored_segments(self.client, self.keys, users)
        out = select_catalog(entries) if select_catalog else list(entries.items())
        box_id = uuid.uuid4().hex
        state = self.keys.seg_state()
        pipe = self.client.pipeline(transaction=True)
        try:
            pipe.watch(*([lock.name] if lock is not None else []), state)       # 2
            if lock is not None and pipe.get(lock.name) != lock.local.token:
                raise InfraError(LOST_LOCK)
            fence = max(int(time.time() * 1000), int(pipe.hget(state, FENCE) or 0) + 1)
            box: dict[str, Any] = {"changes": changes, "catalog": out, "fence": fence}
            pipe.multi()                                                        # 3
            self._stage_users(pipe, box, users, texts)
            for uid, fields in users.items():
                audience.stage_move(pipe, self.keys, uid, old[uid],
                                    fields.get("segment_id") or old[uid])
            if extra is not None:
                extra(pipe)
            if entries:
                pipe.hset(self.keys.seg_catalog(),
                          mapping={k: json.dumps(v) for k, v in entries.items()})
            pipe.hset(state, mapping={
                "model": encode_model(model), "version": model.version,
                "applied": json.dumps(applied), FENCE: fence, OUTBOX_ID: box_id,
                OUTBOX: zlib.compress(json.dumps(box, separators=(",", ":")).encode(), 3)})
            pipe.hincrby(state, "rev", 1)
            crashpoints.reached("segmenter", 3)
            rev = int(pipe.execute()[-1])
        except redis.WatchError:
            raise InfraError(LOST_LOCK) from None
        finally:
            pipe.reset()
        crashpoints.reached("segmenter", 4)
        self._write_users(box)                                                  # 4
        crashpoints.reached("segmenter", 5)
        self._publish_box(box)                                                  # 5
        crashpoints.reached("segmenter", 6)
        self._clear(box_id)                                                     # 6
        return rev


def fresh_model(config: SegConfig, kafka: Any, catalog_topic: str, epoch: StateEpoch
                ) -> OnlineSegmenter:
    """A new model when Redis holds none: its ids continue after the highest ever
    published on the catalog topic; if there are any, Redis lost the state that produced
    them, which is declared (``epoch``: alarm metric, unhealthy ``/healthz``)."""
    model = OnlineSegmenter(config)
    seg, fam = published_high_ids(kafka, catalog_topic)
    if seg or fam:
        model.next_segment = max(model.next_segment, seg + 1)
        model.next_family = max(model.next_family, fam + 1)
        epoch.declare_lost(
            f"Redis lost its data: it has no segmenter state but the catalog topic "
            f"lists segments up to s{seg}; new ids continue from s{seg + 1}")
    return model


def load_if_moved(client: redis.Redis, keys: Keys, rev: int, config: SegConfig,
                  fresh: Callable[[], OnlineSegmenter]
                  ) -> tuple[OnlineSegmenter, int, list[str]] | None:
    """The stored model, its revision and applied ids when the stored revision is no longer
    ``rev`` (another writer or a restart moved it), else None; ``fresh()`` when Redis
    holds no model. A stored model keeps its own config (a differing one is logged)."""
    if read_rev(client, keys) == rev:
        return None
    model, rev, applied = read_state(client, keys)
    if model is None:
        model = fresh()
    elif model.config != config:
        log.warning("stored segmenter state uses %s; settings say %s: keeping the stored "
                    "one", model.config, config)
    return model, rev, applied


def published_high_ids(kafka: Any, topic: str, timeout_s: float = 30.0) -> tuple[int, int]:
    """The highest fine-segment and family numbers (``s<N>``, ``f<N>``) ever published to
    the compacted catalog topic (its keys), read from the beginning to the end offsets.
    A model that starts without stored state continues after them, so ids are never
    reused even when Redis lost the state that counted them."""
    from segstream.kafka_client import TopicPartition

    consumer = kafka.consumer(group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for(topic))]
        if not tps:
            return 0, 0
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)  # a compacted-away start resets to the earliest offset
        ends = consumer.end_offsets(tps)
        high = {"s": 0, "f": 0}
        deadline = time.monotonic() + timeout_s
        while any((consumer.position(tp) or 0) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise InfraError(f"reading the catalog topic {topic} took over {timeout_s:g}s")
            for r in consumer.poll(timeout_ms=500, max_records=500):
                key = (r.key or b"").decode(errors="replace")
                if key[:1] in high and key[1:].isdigit():
                    high[key[0]] = max(high[key[0]], int(key[1:]))
        return high["s"], high["f"]
    finally:
        consumer.close()
