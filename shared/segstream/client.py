"""``segstream.client``: the typed Python API for recommenders.

    from segstream.client import SegmentClient

    with SegmentClient() as seg:                 # settings: env / $SEGSTREAM_CONFIG
        user = seg.get("u42")                    # UserSegment | None
        many = seg.get_many(["u1", "u2"])        # one pipelined Redis round trip
        page = seg.members("s3")                 # MembersPage; pass page.next_cursor on
        for s in seg.segments():                 # the catalog, with exact member counts
            print(s.segment_id, s.tier_path, s.label, s.members)
        with seg.subscribe("my-recommender", from_="latest") as sub:
            for change in sub:                   # typed ChangeRecord, commit on ack()
                handle(change.record)
                change.ack()

Reads go to Redis (the segmenter's per-user hash, the catalog hash and the per-segment
member sets); ``subscribe`` and ``snapshot`` read Kafka (the change feed, or the compacted
``segstream.assignments`` topic with ``topic="assignments"``). Everything is configured by
the same ``Settings`` as the services.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, cast

import redis

from segstream.client_models import (
    MAX_USER_ID,
    Assignment,
    EngagementTier,
    Membership,
    MembersPage,
    Segment,
    UserSegment,
    VectorStatus,
    decode_cursor,
    encode_cursor,
)
from segstream.config import Settings, load_settings
from segstream.errors import DataError, InfraError
from segstream.kafka_client import KafkaClients, kafka_clients
from segstream.keys import Keys
from segstream.redis_io import redis_client
from segstream.subscription import Subscription, read_assignments

__all__ = ["SegmentClient", "Subscription", "check_user_id"]
_TIERS = frozenset({"new", "active", "loyal", "at-risk", "dormant"})


def check_user_id(user_id: object) -> str:
    """The user id as ingest stores it (NFC-normalised), or ``DataError`` (one line) when
    no event could carry it: not a string, blank, longer than 128 characters, holding
    control characters or surrogates, or ``{``/``}`` (reserved for key hash tags)."""
    if not isinstance(user_id, str) or not user_id.strip():
        raise DataError("invalid user id: must be a non-empty string")
    if len(user_id) > MAX_USER_ID:
        raise DataError(f"invalid user id: longer than {MAX_USER_ID} characters")
    if user_id.isascii() and user_id.isprintable() and "{" not in user_id \
            and "}" not in user_id:
        return user_id
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in user_id):
        raise DataError("invalid user id: contains control characters or surrogates")
    if "{" in user_id or "}" in user_id:
        raise DataError("invalid user id: contains { or } (never valid in events)")
    return unicodedata.normalize("NFC", user_id)


def check_segment_id(segment_id: object) -> str:
    """A segment (``s<n>``) or family (``f<n>``) id, or ``DataError``."""
    if (not isinstance(segment_id, str) or len(segment_id) < 2 or len(segment_id) > 20
            or segment_id[0] not in "fs" or not segment_id[1:].isascii()
            or not segment_id[1:].isdigit()):
        raise DataError(f"invalid segment id {str(segment_id)[:40]!r}: expected s<n> or f<n>")
    return segment_id


def _iso_ms(ms: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms else None


class SegmentClient:
    """Reads segment state from Redis and change records from Kafka (see the module doc)."""

    def __init__(self, settings: Settings | None = None, *, redis_conn: redis.Redis | None = None,
                 kafka: KafkaClients | None = None) -> None:
        self.settings = settings or load_settings()
        self.redis = redis_conn if redis_conn is not None else redis_client(self.settings.redis)
        self._own_redis = redis_conn is None
        self.kafka = kafka or kafka_clients(self.settings.kafka)
        self.keys = Keys(self.settings.redis.key_prefix)
        self._catalog: dict[str, dict[str, Any]] = {}
        self._catalog_at = float("-inf")

    # ------------------------------------------------------------------ users
    def get(self, user_id: str) -> UserSegment | None:
        """The user's current segment; None when the segmenter has not assigned them."""
        return self.get_many([user_id])[user_id]

    def get_many(self, user_ids: Iterable[str]) -> dict[str, UserSegment | None]:
        """Current segments of many users in one pipelined round trip, keyed by the ids as
        given (input order; None for a user with no assignment). The catalog, for labels,
        rides along when the cached copy is older than ``api.catalog_ttl_s``."""
        asked = {u: check_user_id(u) for u in user_ids}  # as given -> as stored
        ids = list(dict.fromkeys(asked.values()))
        pipe = self.redis.pipeline(transaction=False)
        refresh = time.monotonic() - self._catalog_at > self.settings.api.catalog_ttl_s
        if refresh:
            pipe.hgetall(self.keys.seg_catalog())
        for uid in ids:
            pipe.hgetall(self.keys.seg(uid))
        replies = self._execute(pipe)
        if refresh:
            self._set_catalog(replies.pop(0))
        found = {uid: self._user(uid, raw) for uid, raw in zip(ids, replies, strict=True)}
        return {given: found[stored] for given, stored in asked.items()}

    def _user(self, user_id: str, raw: dict[bytes, bytes]) -> UserSegment | None:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        if not h.get("segment_id"):
            return None
        path = json.loads(h.get("tier_path") or "[]") or [h["segment_id"]]
        labels = [self._catalog.get(node, {}).get("label") or node for node in path]
        tier = h.get("engagement")
        return UserSegment(
            user_id=user_id, segment_id=h["segment_id"], label=labels[-1],
            confidence=min(1.0, max(0.0, float(h.get("confidence") or 0.0))),
            memberships=[Membership(segment_id=s, weight=min(1.0, max(0.0, w)))
                         for s, w in json.loads(h.get("memberships") or "[]")],
            tier_path=path, tier_labels=labels,
            engagement_tier=cast(EngagementTier, tier) if tier in _TIERS else None,
            model_version=h.get("model_version") or None,
            centroids_version=int(h.get("centroids_version") or 0),
            updated_at=_iso_ms(h.get("assigned_ms")))

    def vector_status(self, user_id: str) -> VectorStatus:
        """Is the user's embedding current (its text, its model, nothing queued)? See
        ``VectorStatus``; one pipelined round trip."""
        from segstream.encoding import text_hash  # torch: only when asked

        uid = check_user_id(user_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.emb(uid), ["model_version", "text_hash", "encoded_ms", "vec",
                                        "interest_ms", "text_ms"])
        pipe.get(self.keys.text(uid))
        pipe.zscore(self.keys.dirty(), uid)
        pipe.zscore(self.keys.claims(), uid)
        pipe.hget(self.keys.model_registry(), "active_version")
        pipe.hvals(self.keys.seg_catalog())
        (mv, th, at, vec, interest_ms, text_ms), text, dirty, claimed, active, catalog = \
            self._execute(pipe)
        model = mv.decode() if mv else None
        serving = active.decode() if active else None
        if serving is None:
            versions = [json.loads(e).get("model_version") for e in catalog]
            serving = max(set(versions) - {None}, key=versions.count, default=None)
        embedded = bool(vec) and bool(th) and text is not None and \
            th.decode() == text_hash(text.decode())
        text_counts = self.settings.interest.view_weights.get("text", 0.0) > 0
        queued = dirty is not None or claimed is not None
        on_model = None if serving is None or not vec else model == serving
        return VectorStatus(
            user_id=uid, present=bool(vec), model_version=model,
            embedded_at=_iso_ms(at.decode() if at else None), text_is_embedded=embedded,
            queued_for_encoding=queued, serving_model_version=serving,
            model_is_serving=on_model,
            current=bool(vec) and (embedded or not text_counts) and not queued
            and on_model is not False,
            interest_at=_iso_ms(interest_ms.decode()) if interest_ms and interest_ms != b"0"
            else None,
            text_embedded_at=_iso_ms(text_ms.decode()) if text_ms else None)

    # ------------------------------------------------------------------ segments
    def segments(self, include_retired: bool = False) -> list[Segment]:
        """The catalog: each family followed by its segments, with exact member counts."""
        self._set_catalog(self._execute_one(lambda: self.redis.hgetall(
            self.keys.seg_catalog())))
        entries = [e for e in self._catalog.values()
                   if include_retired or e.get("status") == "active"]
        counts = self._counts(entries)

        def order(e: dict[str, Any]) -> tuple[int, int, int]:
            head = e["tier_path"][0]
            return (int(head[1:]) if head.startswith("f") else 0, e["tier"],
                    int(e["segment_id"][1:]))

        return [Segment(**e, members=counts[e["segment_id"]]) for e in sorted(entries, key=order)]

    def segment(self, segment_id: str) -> Segment | None:
        """One catalog entry (active or retired) with its member count; None if unknown."""
        check_segment_id(segment_id)
        raw = self._execute_one(lambda: self.redis.hget(self.keys.seg_catalog(),
                                                        segment_id))
        if raw is None:
            return None
        entry = json.loads(raw)
        return Segment(**entry, members=self._counts([entry])[segment_id])

    def _counts(self, entries: list[dict[str, Any]]) -> dict[str, int]:
        """ZCARD of every tier-2 segment named (a family counts its children)."""
        fine: set[str] = set()
        for e in entries:
            fine.update((e.get("children") or []) if e["tier"] == 1 else [e["segment_id"]])
        ordered = sorted(fine)
        pipe = self.redis.pipeline(transaction=False)
        for sid in ordered:
            pipe.zcard(self.keys.seg_members(sid))
        sizes = dict(zip(ordered, self._execute(pipe), strict=True)) if ordered else {}
        return {e["segment_id"]: (sum(sizes[c] for c in e.get("children") or [])
                                  if e["tier"] == 1 else sizes[e["segment_id"]])
                for e in entries}

    def members(self, segment_id: str, cursor: str | None = None, limit: int | None = None
                ) -> MembersPage:
        """One page of a segment's member user ids, in byte order. Pass ``next_cursor``
        to get the next page; a user who stays in the segment meanwhile is returned once
        (pages are ranges of the sorted set, not a hash-table scan)."""
        check_segment_id(segment_id)
        limit = limit or self.settings.api.page_size
        if not 1 <= limit <= 10_000:
            raise DataError(f"invalid page limit {limit}: expected 1..10000")
        start = b"-" if cursor is None else b"(" + self._cursor(cursor)
        raw = self._execute_one(lambda: self.redis.zrangebylex(
            self.keys.seg_members(segment_id), start, b"+", 0, limit + 1))
        more = len(raw) > limit
        raw = raw[:limit]
        return MembersPage(segment_id=segment_id, members=[m.decode() for m in raw],
                           next_cursor=encode_cursor(raw[-1]) if more else None)

    def iter_members(self, segment_id: str, page: int | None = None) -> Iterator[str]:
        """Every member of a segment, a page at a time (never the whole set in memory)."""
        cursor = None
        while True:
            got = self.members(segment_id, cursor, page)
            yield from got.members
            if got.next_cursor is None:
                return
            cursor = got.next_cursor

    @staticmethod
    def _cursor(cursor: str) -> bytes:
        try:
            return decode_cursor(cursor)
        except ValueError as exc:
            raise DataError(str(exc)) from None

    # ------------------------------------------------------------------ Kafka
    def subscribe(self, group: str, from_: Literal["latest", "earliest"] = "latest", *,
                  topic: Literal["segments", "assignments"] = "segments",
                  join_timeout_s: float = 30.0) -> Subscription:
        """Join consumer group ``group`` on the change feed (or the compacted assignments
        topic) and return an iterator of typed ``Change`` records. A group with no
        committed offsets starts at ``from_``; afterwards it resumes after the last record
        acknowledged with ``Change.ack()``. Returns once partitions are assigned."""
        if from_ not in ("latest", "earliest"):
            raise DataError(f"invalid from_ {from_!r}: expected 'latest' or 'earliest'")
        name = self.settings.topics.segments if topic == "segments" \
            else self.settings.topics.assignments
        return Subscription(self.kafka, name, group, from_, join_timeout_s)

    def snapshot(self, timeout_s: float = 60.0) -> dict[str, Assignment]:
        """Every user's current assignment, read from offset 0 of the compacted
        ``segstream.assignments`` topic up to its end (tombstones remove users)."""
        return read_assignments(self.kafka, self.settings.topics.assignments, timeout_s)

    # ------------------------------------------------------------------ plumbing
    def _set_catalog(self, raw: dict[bytes, bytes]) -> None:
        self._catalog = {k.decode(): json.loads(v) for k, v in raw.items()}
        self._catalog_at = time.monotonic()

    @staticmethod
    def _execute(pipe: Any) -> list[Any]:
        try:
            return pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise InfraError(f"Redis is not reachable: {exc}") from None

    @staticmethod
    def _execute_one(call: Any) -> Any:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise InfraError(f"Redis is not reachable: {exc}") from None

    def close(self) -> None:
        if self._own_redis:
            self.redis.close()

    def __enter__(self) -> SegmentClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
