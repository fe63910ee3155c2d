"""The segmenter's state in Redis and its one writer (used by the segmenter and rollout).

Keys (``segstream.keys.Keys``; the segmenter-wide keys share the ``{<prefix>:seg}`` hash
tag, the per-user ones the user's tag):

- ``seg_state()``   hash: ``model`` (zlib-compressed JSON of ``OnlineSegmenter.to_dict``),
                    ``rev`` (+1 per write: other consumers reload when it moved),
                    ``version`` (centroids version), ``applied`` (JSON list of the most
                    recent stream entry ids whose effect is in ``model``)
- ``seg_catalog()`` hash: segment or family id -> current catalog entry (JSON)
- ``seg_lock()``    string: the lease that serialises writers (consumers and rollout)
- ``seg(uid)``      hash: segment_id, confidence, memberships, tier_path, text_hash,
                    model_version, centroids_version, assigned_ms, engagement,
                    first_seen_ms, last_active_ms, frequency, monetary (short values
                    only, so Redis keeps it as a compact listpack)
- ``seg_text(uid)`` string: the feature text at the user's last segment change (the
                    next change record lists the sentences that changed since)
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import redis

from segstream.config import Settings
from segstream.errors import DataError, InfraError
from segstream.features import Rfm
from segstream.keys import Keys
from segstream.records import catalog_entries
from segstream.redis_io import hash_fields
from segstream.segmentation import Assignment, OnlineSegmenter
from segstream.segmentation.engagement import EngagementThresholds, engagement_tier
from segstream_services.segmenter import audience

APPLIED_KEEP = 4096
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


def assignment_fields(a: Assignment, centroids_version: int, now_ms: int) -> dict[str, Any]:
    """The ``seg(uid)`` fields an assignment sets (the caller adds its own)."""
    return {"segment_id": a.segment_id, "confidence": round(a.confidence, 6),
            "memberships": json.dumps([[s, round(w, 4)] for s, w in a.memberships],
                                      separators=(",", ":")),
            "tier_path": json.dumps(a.tier_path, separators=(",", ":")),
            "centroids_version": centroids_version, "assigned_ms": now_ms}


class SegmentStateWriter:
    """The one writer of segment state: users' segment hashes, the model state and the
    catalog in Redis, and the change and catalog records on Kafka. The segmenter loop and
    model rollout both write through ``commit``, under ``lock``."""

    def __init__(self, client: redis.Redis, keys: Keys, publish: Publish,
                 segments_topic: str, catalog_topic: str,
                 assignments_topic: str | None = None) -> None:
        self.client = client
        self.keys = keys
        self.publish = publish
        self.segments_topic = segments_topic
        self.catalog_topic = catalog_topic
        self.assignments_topic = assignments_topic

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

    def commit(self, model: OnlineSegmenter, now_ms: int, *, changes: Records,
               users: dict[str, dict[str, Any]], texts: dict[str, str], applied: list[str],
               lock: Any = None,
               select_catalog: Callable[[dict[str, dict[str, Any]]], Records] | None = None,
               extra: Callable[[Any], None] | None = None) -> int:
        """Write one batch's effect, in this order; returns the new state revision.

        1. Publish ``changes`` (user id, ``records.change_record``) to the segments topic,
           and the same records to the compacted assignments topic, and wait for every
           ack; a failure raises and nothing below happens.
        2. Check that ``lock`` (when given) is still held; raise ``InfraError`` if not.
        3. In one MULTI/EXEC: each user's ``seg(uid)`` fields (``users``; HSET merges
           into what is stored) with its move between member sets (``audience``),
           ``seg_text(uid)`` for ``texts``, the caller's ``extra``
           commands (rollout: vector rotation), every catalog entry of ``model``, the
           model state with ``applied``, and ``rev`` + 1.
        4. Publish the catalog entries ``select_catalog`` picks from this batch's entries
           (default: all) and wait for the acks.

        A crash before 3 leaves Redis as it was: the caller replays and may publish the
        same change records again (at-least-once); a crash after 3 and before 4 leaves
        the catalog topic behind until the next publication of those entries.
        """
        self.publish(self.segments_topic, changes)                              # 1
        if self.assignments_topic:
            self.publish(self.assignments_topic, changes)  # the latest per user: current
        if lock is not None and not lock.owned():                               # 2
            raise InfraError("lost the segmenter model lock mid-batch; batch will be replayed")
        entries = catalog_entries(model, now_ms)
        old = audience.stored_segments(self.client, self.keys, users)
        pipe = self.client.pipeline(transaction=True)                           # 3
        for uid, fields in users.items():
            pipe.hset(self.keys.seg(uid), mapping=hash_fields(fields))
            audience.stage_move(pipe, self.keys, uid, old[uid],
                                fields.get("segment_id") or old[uid])
        for uid, text in texts.items():
            pipe.set(self.keys.seg_text(uid), text)
        if extra is not None:
            extra(pipe)
        if entries:
            pipe.hset(self.keys.seg_catalog(),
                      mapping={k: json.dumps(v) for k, v in entries.items()})
        pipe.hset(self.keys.seg_state(), mapping={
            "model": encode_model(model), "version": model.version,
            "applied": json.dumps(applied)})
        pipe.hincrby(self.keys.seg_state(), "rev", 1)
        rev = int(pipe.execute()[-1])
        out = select_catalog(entries) if select_catalog else list(entries.items())
        self.publish(self.catalog_topic, out)                                   # 4
        return rev
