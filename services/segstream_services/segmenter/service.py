"""The segmenter service: embedded users in, segment changes and the catalog out.

One batch: read entries of the ``embedded`` stream (``stream_entry.EmbeddedEntry``) with a
consumer group, keep the newest entry per user, load the users' vectors, update the model
and assign (``OnlineSegmenter``), then write through ``store.SegmentStateWriter.commit``
(steps 1-6: finish a leftover outbox; check the lock; store the users' segment hashes
and member-set moves, the model state and this batch's outbox of records in one
MULTI/EXEC — on a Redis Cluster, one within the segmenter's hash slot, the hashes then
written per user from the outbox; publish the outbox and wait for Kafka's acks; clear
it) and only then (step 7) XACK the entries. A crash anywhere replays
the batch: entries whose ids the stored state already lists as applied are only acked
(after the outbox they left is published), so the model never learns a batch twice, and
a user whose stored segment already matches emits nothing new (at-least-once output,
idempotent state). Acknowledged entries are trimmed from the stream by the segmenter
(``trim``: never past the oldest entry a group has not acknowledged).

Model updates are serialised across consumers by a Redis lease lock; every consumer
reloads the model when the stored revision moved, so more consumers in the group share
the work of reading, deduplicating and publishing, and take over from a dead one
(``XAUTOCLAIM`` of entries idle longer than ``claim_idle_ms``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import redis

from segstream import crashpoints
from segstream.config import Settings
from segstream.errors import InfraError
from segstream.features import Rfm
from segstream.kafka_client import KafkaClientError, KafkaClients, kafka_clients
from segstream.keys import Keys
from segstream.records import change_record
from segstream.redis_io import redis_client
from segstream.segmentation import Assignment, Observation, OnlineSegmenter, SegConfig
from segstream.segmentation.engagement import engagement_tier
from segstream.segmentation.labels import text_changes
from segstream.state_epoch import StateEpoch
from segstream.stream_entry import EmbeddedEntry
from segstream_services.segmenter import audience, publish, retention, store, stream
from segstream_services.segmenter.metrics import SegmenterMetrics

log = logging.getLogger(__name__)
_PREV_TEXT, _NEW_TEXT = "_prev_text", "_new_text"
# per-user values used while handling a batch but not stored in the user's hash (texts
# live in their own key so the hash keeps Redis' compact listpack encoding)
_TRANSIENT = frozenset({"event_ms", _PREV_TEXT, _NEW_TEXT, "text", "label"})


TRIM_EVERY_S = 1.0


def now_ms() -> int:
    return int(time.time() * 1000)


class SegmenterService:
    """Reads the ``embedded`` stream, keeps the model current and publishes changes."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None,
                 kafka: Any = None, consumer: str | None = None,
                 metrics: SegmenterMetrics | None = None) -> None:
        self.settings = settings
        self.s = settings.segmenter
        self.redis = client if client is not None else redis_client(settings.redis)
        # the caller's KafkaClients, or clients built from what it lends (its ``settings``)
        self.kafka = kafka if isinstance(kafka, KafkaClients) else kafka_clients(
            kafka.settings if kafka is not None else settings.kafka)
        self.keys = Keys(settings.redis.key_prefix)
        self.stream = self.keys.embedded()
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = metrics or SegmenterMetrics()
        self.epoch = StateEpoch(self.redis, self.keys, self.metrics.base)
        self.config = SegConfig.from_settings(self.s)
        self.thresholds = store.thresholds(settings)
        self.writer = store.SegmentStateWriter(self.redis, self.keys, self._publish,
                                               settings.topics.segments,
                                               settings.topics.catalog,
                                               settings.topics.assignments,
                                               settings.redis.user_ttl_s)
        self.stop_event = threading.Event()
        self.model = OnlineSegmenter(self.config)
        self.rev = -1
        self.applied: deque[str] = deque(maxlen=store.APPLIED_KEEP)
        self._applied_set: set[str] = set()
        self.catalog = publish.CatalogPicker(self.s.catalog_refresh_s)
        self._claim_at = 0.0
        self._trim_at = 0.0
        self._pending = True  # first read our own unacked entries (a restart after a crash)
        self._producer: Any = None

    # ------------------------------------------------------------------ lifecycle
    def run(self, idle_exit_s: float | None = None) -> None:
        """Process batches until ``stop()`` (or ``idle_exit_s`` seconds without entries);
        the batch in hand finishes. Signals and ``/metrics`` are the skeleton's
        (``segstream_services.runtime``)."""
        self.ensure_group()
        log.info("segmenter %s reading %s as group %s", self.consumer, self.stream, self.s.group)
        idle_since = time.monotonic()
        epoch_at = 0.0
        try:
            while not self.stop_event.is_set():
                if time.monotonic() - epoch_at >= 1.0:
                    epoch_at = time.monotonic()
                    with contextlib.suppress(redis.RedisError, InfraError):
                        self.epoch.check()  # raises while lost: the alarm is up, go on
                try:
                    if self.step():
                        idle_since = time.monotonic()
                    elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                except (redis.RedisError, KafkaClientError, InfraError, OSError) as exc:
                    if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
                        self._group_lost()
                        continue
                    log.warning("batch failed, will retry: %s", exc)
                    self._reset()
                    self.stop_event.wait(1.0)
        finally:
            self.close()

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(timeout=10)
            self._producer.close(timeout=10)
            self._producer = None

    def ensure_group(self) -> None:
        stream.ensure_group(self.redis, self.stream, self.s.group)

    def _group_lost(self) -> None:
        """The stream or its group vanished (Redis lost its data, or an operator deleted
        them): say so, re-create the group from the start of the stream and go on."""
        log.error("consumer group %s of %s is gone (Redis lost its data?): re-creating it",
                  self.s.group, self.stream)
        self.metrics.group_recreated.inc()
        self.ensure_group()
        self._reset()

    def _reset(self) -> None:
        """After a failed batch: forget in-memory changes, re-read our pending entries."""
        self.rev = -1
        self._pending = True
        self.catalog.forget()  # entries picked for a batch that was never stored

    @property
    def producer(self) -> Any:
        if self._producer is None:
            self._producer = self.kafka.producer()
        return self._producer

    # ------------------------------------------------------------------ one batch
    def step(self) -> int:
        """Read and handle one batch; returns the number of entries handled."""
        if time.monotonic() - self._claim_at > self.s.claim_idle_ms / 2000:
            self._claim_at = time.monotonic()
            claimed = self.redis.xautoclaim(self.stream, self.s.group, self.consumer,
                                            self.s.claim_idle_ms, "0-0",
                                            count=self.s.batch_size, justid=True)
            # redis-py returns the claimed ids themselves when justid=True (an IndexError
            # on claimed[1] used to kill the consumer taking over exactly one entry)
            if claimed:
                self._pending = True
        start = "0" if self._pending else ">"
        reply: Any = self.redis.xreadgroup(self.s.group, self.consumer, {self.stream: start},
                                      count=self.s.batch_size,
                                      block=None if self._pending else self.s.block_ms)
        raw = reply[0][1] if reply else []
        if self._pending and not raw:
            self._pending = False
        if not raw:
            self._trim_if_due()  # idle too: an encoder held back at the bound waits for it
            return 0
        t0 = time.perf_counter()
        self.handle(raw)
        self.metrics.batch.observe(time.perf_counter() - t0)
        return len(raw)

    def handle(self, raw: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Handle stream entries end to end (see the module docstring for the order)."""
        ids = [r[0].decode() if isinstance(r[0], bytes) else r[0] for r in raw]
        with self.writer.lock(self.s.lock_ttl_s) as lock:
            self.writer.recover()  # a batch stored but not yet published (crash, lost lock)
            self._refresh_model()
            latest: dict[str, EmbeddedEntry] = {}
            for eid, (_, fields) in zip(ids, raw, strict=True):
                entry = EmbeddedEntry.parse(eid, fields or {})  # None: trimmed while pending
                if entry is None:
                    self.metrics.entries.labels("invalid").inc()
                    log.warning("stream entry %s has no user_id or a bad time: skipped", eid)
                elif eid in self._applied_set:
                    self.metrics.entries.labels("applied-before").inc()
                else:
                    if entry.user_id in latest:
                        self.metrics.entries.labels("coalesced").inc()
                    latest[entry.user_id] = entry
            if latest:
                self._apply(latest, lock)
            crashpoints.reached("segmenter", 7)
            self.redis.xack(self.stream, self.s.group, *ids)
        self._trim_if_due()

    def _trim_if_due(self) -> None:
        if time.monotonic() - self._trim_at >= TRIM_EVERY_S:
            self._trim_at = time.monotonic()
            self.metrics.trimmed.inc(self.trim())

    def trim(self) -> int:
        """Remove the stream entries every consumer group has acknowledged (returns how
        many; see ``stream.trim_acknowledged``)."""
        return stream.trim_acknowledged(self.redis, self.stream)

    def _apply(self, latest: dict[str, EmbeddedEntry], lock: Any) -> None:
        users = list(latest)
        pipe = self.redis.pipeline(transaction=False)
        for uid in users:
            pipe.hgetall(self.keys.emb(uid))
            pipe.hgetall(self.keys.seg(uid))
            pipe.get(self.keys.text(uid))
        got = pipe.execute()
        states: dict[str, dict[str, Any]] = {}
        obs: list[Observation] = []
        for i, uid in enumerate(users):
            emb, seg, text = got[3 * i], store.decode_hash(got[3 * i + 1]), got[3 * i + 2]
            outcome = self._observation(uid, latest[uid], emb, seg, text, states, obs)
            self.metrics.entries.labels(outcome).inc()
        t = now_ms()
        assignments = self.model.observe(obs, t) if obs else []
        self._fill_missing_states([a.key for a in assignments], states)
        self._load_rfm([a.key for a in assignments if a.changed], states)
        records = [self._assign(a, states, t) for a in assignments]
        if self.model.maintenance_due:
            extra = self._maintain(states, t)
            self._load_rfm([a.key for a in extra if a.changed], states)
            records += [self._assign(a, states, t) for a in extra]
            assignments += extra
        changes = [r for r in records if r is not None]
        events = self.model.drain_events()
        self._remember_applied([e.id for e in latest.values()])
        published: list[int] = []
        pruned = retention.prune(self.model, t, self.s.retired_retention_days).ids
        self.rev = self.writer.commit(
            self.model, t, changes=[(r["user_id"], r) for r in changes],
            users={uid: {k: v for k, v in st.items() if k not in _TRANSIENT and v is not None}
                   for uid, st in states.items()},
            texts={uid: st[_NEW_TEXT] for uid, st in states.items()
                   if st.get(_NEW_TEXT) is not None},
            applied=list(self.applied), lock=lock,
            select_catalog=lambda entries: self.catalog.pick(entries, events, published),
            extra=(lambda pipe: pipe.hdel(self.keys.seg_catalog(), *pruned)) if pruned
            else None)
        self.metrics.catalog.inc(sum(published))
        for s in audience.freshness_seconds(changes, {u: st.get("last_active_ms") for u, st
                                                      in states.items()}, now_ms()):
            self.metrics.freshness.observe(s)
        self.metrics.observe_batch(self.model, assignments, changes, events)

    def _observation(self, uid: str, entry: EmbeddedEntry, emb: dict[bytes, bytes],
                     seg: dict[str, str], text: bytes | None, states: dict[str, dict[str, Any]],
                     obs: list[Observation]) -> str:
        if b"vec" not in emb:
            return "missing-embedding"
        mv = emb.get(b"model_version", b"").decode() or entry.model_version
        # the vector's identity: its vec_hash (the interest path), else its text's hash
        th = (emb.get(b"vec_hash") or emb.get(b"text_hash") or b"").decode() or entry.text_hash
        if self.model.model_version is None:
            self.model.model_version = mv
        elif mv != self.model.model_version:
            return "model-mismatch"
        if seg.get("text_hash") == th and seg.get("model_version") == mv:
            return "duplicate"
        first = int(seg.get("first_seen_ms") or entry.dirty_ms)
        state: dict[str, Any] = {
            **seg, "text_hash": th, "model_version": mv, "event_ms": entry.dirty_ms,
            "first_seen_ms": min(first, entry.dirty_ms),
            "last_active_ms": max(int(seg.get("last_active_ms") or 0), entry.dirty_ms),
            "frequency": int(seg.get("frequency") or 0) + 1,
        }
        states[uid] = state
        vec = np.frombuffer(emb[b"vec"], dtype="<f2").astype(np.float32)
        obs.append(Observation(uid, vec, text.decode() if text else "",
                               seg.get("segment_id") or None))
        return "processed"

    def _fill_missing_states(self, users: list[str], states: dict[str, dict[str, Any]]
                             ) -> None:
        """Per-user state of users not read in this batch (assigned from the cold-start
        buffer, or looked at by a maintenance refit): ``store.stored_states``."""
        states.update(store.stored_states(self.redis, self.keys,
                                          [uid for uid in users if uid not in states],
                                          self.model.model_version or ""))

    def _load_rfm(self, users: list[str], states: dict[str, dict[str, Any]]) -> None:
        """For the users about to get a record: the event-time RFM ingest published
        (``Keys.rfm``; the others keep the cheap stream-time tracking until they change) and
        the feature text of their previous assignment (for the record's text diff)."""
        if not users:
            return
        pipe = self.redis.pipeline(transaction=False)
        for uid in users:
            pipe.hgetall(self.keys.rfm(uid))
            pipe.get(self.keys.seg_text(uid))
        got = pipe.execute()
        for i, uid in enumerate(users):
            st = states[uid]
            prev = got[2 * i + 1]
            st[_PREV_TEXT] = prev.decode() if prev else None
            rfm = Rfm.from_fields(got[2 * i])
            if rfm is not None:
                st.update(last_active_ms=rfm.last_active_ms, frequency=rfm.frequency,
                          monetary=rfm.monetary,
                          first_seen_ms=min(int(st["first_seen_ms"]), rfm.first_event_ms))

    def _maintain(self, states: dict[str, dict[str, Any]], t: int) -> list[Assignment]:
        """A maintenance refit over the recent users' current embeddings (see
        ``OnlineSegmenter.maintain``)."""
        users = self.model.recent_keys()
        self._fill_missing_states(users, states)
        pipe = self.redis.pipeline(transaction=False)
        for uid in users:
            pipe.hmget(self.keys.emb(uid), ["vec", "model_version"])
            pipe.get(self.keys.text(uid))
        got = pipe.execute()
        obs = []
        for i, uid in enumerate(users):
            (vec, mv), text = got[2 * i], got[2 * i + 1]
            if vec is None or (mv or b"").decode() != self.model.model_version:
                continue
            obs.append(Observation(uid, np.frombuffer(vec, dtype="<f2").astype(np.float32),
                                   text.decode() if text else "",
                                   states[uid].get("segment_id") or None))
        out = self.model.maintain(obs, t)
        log.info("maintenance refit over %d users: %s", len(obs),
                 f"new centres, {sum(a.changed for a in out)} users moved" if out
                 else "kept the current centres")
        return out

    def _assign(self, a: Assignment, states: dict[str, dict[str, Any]], t: int
                ) -> dict[str, Any] | None:
        st = states[a.key]
        tier = engagement_tier(int(st["first_seen_ms"]), int(st["last_active_ms"]),
                               int(st["frequency"]), t, float(st.get("monetary") or 0.0),
                               thresholds=self.thresholds)
        seg = self.model.segments[a.segment_id]
        record = None
        if a.changed:
            record = change_record(
                a, seg.label, tier, text_changes(st.get(_PREV_TEXT), a.text),
                self.model.model_version or "", self.model.version, int(st["event_ms"]), t)
            st[_NEW_TEXT] = a.text
        st.update(store.assignment_fields(a, self.model.version, t), engagement=tier)
        return record

    def _remember_applied(self, entry_ids: list[str]) -> None:
        for eid in entry_ids:
            if len(self.applied) == self.applied.maxlen:
                self._applied_set.discard(self.applied[0])
            self.applied.append(eid)
            self._applied_set.add(eid)

    def _publish(self, topic: str, records: store.Records) -> None:
        """Send and wait for every ack (``publish.send_and_wait``); the state writer
        publishes through it."""
        publish.send_and_wait(self.producer, topic, records,
                              self.settings.kafka.request_timeout_ms / 1000)

    # ------------------------------------------------------------------ model state
    def _refresh_model(self) -> None:
        """Reload the model when another writer (or a restart) moved the stored revision
        (``store.load_if_moved``; a fresh one from ``store.fresh_model`` when none)."""
        loaded = store.load_if_moved(
            self.redis, self.keys, self.rev, self.config,
            lambda: store.fresh_model(self.config, self.kafka, self.settings.topics.catalog,
                                      self.epoch))
        if loaded is not None:
            self.model, self.rev, applied = loaded
            self.applied = deque(applied, maxlen=store.APPLIED_KEEP)
            self._applied_set = set(self.applied)
