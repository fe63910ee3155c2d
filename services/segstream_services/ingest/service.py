"""The ingest consumer: Kafka events -> validation and cleaning -> Redis features -> texts.

Invalid records become dead letters (format and blocking behaviour: ``dead_letters``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import redis

from segstream import crashpoints
from segstream.config import Settings
from segstream.errors import InfraError, InvalidEvent
from segstream.events import Event, parse_event
from segstream.feature_store import FeatureStore, InFlight, PendingEvent, UserResult
from segstream.feature_text import render
from segstream.features import Rfm, increments, summarize, zone
from segstream.interest import event_weight
from segstream.kafka_client import KafkaClientError, KafkaClients, TopicPartition, kafka_clients
from segstream.redis_io import check_redis, redis_client
from segstream_services.ingest.batch import BatchResult, Cleaned, Prepared, RunStats
from segstream_services.ingest.dead_letters import DeadLetterSender
from segstream_services.ingest.metrics import IngestMetrics
from segstream_services.ingest.offsets import OffsetCommits
from segstream_services.ingest.topic_ids import TopicIds

log = logging.getLogger("segstream.ingest")
STATUS_OUTCOME = {"A": ("applied", ""), "R": ("duplicate", "redelivery"),
                  "D": ("duplicate", "event_id"), "B": ("cleaned", "bot_rate"),
                  "O": ("cleaned", "outside_window")}


class IngestService:
    """One member of the ``segstream-ingest`` consumer group."""

    def __init__(self, settings: Settings, kafka: KafkaClients | None = None,
                 client: redis.Redis | None = None, metrics: IngestMetrics | None = None
                 ) -> None:
        self.settings = settings
        self.cfg = settings.ingest
        zone(self.cfg.timezone)  # fail fast on a bad zone name
        self.kafka = kafka or kafka_clients(settings.kafka)
        self.redis = client or redis_client(settings.redis)
        self.metrics = metrics or IngestMetrics()
        self.store = FeatureStore(self.redis, settings)
        self.allowed_types = settings.events.allowed_types
        self.stop_event = threading.Event()
        self._consumer: Any = None
        self._offsets: OffsetCommits | None = None  # set with the consumer in ``run``
        self._producer: Any = None
        self._last_gauges = 0.0
        self._inflight: tuple[Prepared, InFlight | None, float] | None = None
        self._topic_ids = TopicIds(settings.kafka)  # watermarks are per topic incarnation
        self.dead_letters = DeadLetterSender(settings.topics.dlq,
                                             settings.events.dlq_max_value_bytes, self.metrics)

    # ---- validation and cleaning (stateless) -------------------------------------------

    def check(self, value: bytes | None, now_ms: int) -> Event | Cleaned:
        """The event in a record value, or ``Cleaned``; raises ``InvalidEvent``."""
        event = parse_event(value if value is not None else b"", self.allowed_types,
                            self.settings.events.max_record_bytes)
        for name in ("event_id", "user_id", "item_id"):
            try:
                getattr(event, name).encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidEvent("bad_value", f"{name} is not valid Unicode") from None
        cfg = self.cfg
        if event.price is not None and event.price > cfg.max_price:
            return Cleaned("absurd_value", f"price {event.price:g} > {cfg.max_price:g}")
        if event.quantity is not None and event.quantity > cfg.max_quantity:
            return Cleaned("absurd_value", f"quantity {event.quantity} > {cfg.max_quantity}")
        if event.dwell_s is not None and event.dwell_s > cfg.max_dwell_s:
            return Cleaned("absurd_value", f"dwell_s {event.dwell_s:g} > {cfg.max_dwell_s:g}")
        if event.ts_ms > now_ms + cfg.max_future_s * 1000:
            return Cleaned("future", "ts is too far in the future")
        if cfg.max_age_days and event.ts_ms < now_ms - cfg.max_age_days * 86_400_000:
            return Cleaned("too_old", f"ts is older than {cfg.max_age_days:g} days")
        return event

    # ---- one batch ---------------------------------------------------------------------

    def handle_batch(self, records: Sequence[Any], commit: Callable[[dict], None]) -> BatchResult:
        """Process one polled batch and commit its offsets, in this order:

        1. Validate and clean every record; produce the invalid ones to the DLQ (original
           bytes, reason and source headers) and **flush** the producer, so no dead letter
           is lost once offsets move on.
        2. Apply the valid events to Redis: one Lua call per user (dedup by offset
           watermark and event id, bot rule, bucket increments, titles), pipelined by
           ``redis_chunk`` events, and wait until Redis acknowledged every call.
        3. Re-render the feature text of every user touched by the batch, including users
           whose events were all duplicates; register items seen for the first time
           (``FeatureStore.note_item``); publish the RFM inputs (``features.Rfm``) of
           users with applied or redelivered events; write the texts of users whose text
           changed or who had applied events (their interest state moved) and ``ZADD NX``
           them to the dirty queue (also users with redelivered events, whose mark a
           crash between a text write and its mark could have lost). Texts and RFM are
           written only while the user's state is at the version they were rendered
           from: a consumer that lost the partition mid-batch cannot overwrite what the
           new owner wrote from a later state.
        4. Commit the offsets after the last record of each partition in the batch.

        A crash anywhere before 4 redelivers the batch: steps 1-3 are idempotent for the
        state (redelivered records are skipped by their offset watermark), so nothing is
        lost or counted twice. Errors in 1-3 propagate and nothing is committed. ``run``
        performs the same steps through ``prepare``/``finish``, overlapping step 2 of one
        batch with polling and step 1 of the next (see ``run``). Both paths pass the crash
        point ``ingest:N`` (``segstream.crashpoints``) just before step N.
        """
        prepared = self.prepare(records)                                      # step 1
        crashpoints.reached("ingest", 2)
        results = self.store.apply(prepared.by_user) if prepared.by_user else {}  # step 2
        return self.finish(prepared, results, commit)                         # steps 3, 4

    def prepare(self, records: Sequence[Any]) -> Prepared:
        """Step 1: validate, clean, dead-letter (flushed) and compute the increments."""
        crashpoints.reached("ingest", 1)
        m = self.metrics
        prepared = Prepared(records, defaultdict(list), BatchResult(records=len(records)))
        outcomes = prepared.result.outcomes
        now_ms = int(time.time() * 1000)
        dead_letters: list[tuple[Any, str, InvalidEvent]] = []
        m.consumed.inc(len(records))
        valid = 0  # counted once per batch (a metric update per record costs)
        # per record: names looked up once per batch
        check, cfg, interest = self.check, self.cfg, self.settings.interest
        topic_key, note_item, by_user = self._topic_ids.key, self.store.note_item, prepared.by_user
        for record in records:
            try:
                checked = check(record.value, now_ms)
            except InvalidEvent as exc:
                dead_letters.append((record, exc.reason, exc))
                outcomes[f"dead_lettered:{exc.reason}"] += 1
                continue
            valid += 1
            if isinstance(checked, Cleaned):
                m.cleaned.labels(rule=checked.rule).inc()
                outcomes[f"cleaned:{checked.rule}"] += 1
                continue
            by_user[checked.user_id].append(PendingEvent(
                checked.event_id, increments(checked, cfg),
                topic_key(record.topic, record.partition, record.offset),
                record.partition, record.offset, checked.item_id,
                event_weight(checked, interest)))
            if checked.title or checked.category:
                note_item(checked.item_id, checked.title, checked.category)
        m.valid.inc(valid)
        if dead_letters:
            self.dead_letters.send(dead_letters)
        return prepared

    def dlq_check(self) -> None:
        """The ``dlq`` health check (``DeadLetterSender.check``)."""
        self.dead_letters.check()

    def finish(self, prepared: Prepared, results: dict[str, UserResult],
               commit: Callable[[dict], None]) -> BatchResult:
        """Steps 3 and 4, once Redis acknowledged step 2 (``results``)."""
        m = self.metrics
        result = prepared.result
        updates = []
        rfm: dict[str, Rfm] = {}
        letters: Counter[str] = Counter()  # status letters, counted once per batch
        texts_changed = 0  # likewise
        versions: dict[str, str] = {}  # the state version each text and RFM comes from
        cfg = self.cfg
        for uid, res in results.items():
            versions[uid] = res.version
            statuses = res.statuses
            letters.update(statuses)
            features = summarize(res.state, cfg)
            text = render(features, cfg)
            applied, redo = "A" in statuses, "R" in statuses
            if applied or redo:
                found = Rfm.of(res.state, features, cfg)
                if found is not None:
                    rfm[uid] = found
            changed = text != res.text
            texts_changed += changed
            # an applied event moves the interest state even when the text stays the same:
            # the user is marked, but an unchanged text is not written again ('')
            updates.append((uid, text if changed or redo else "", changed or redo or applied))
        m.texts_changed.inc(texts_changed)
        for letter, n in letters.items():
            outcome, label = STATUS_OUTCOME[letter]
            result.outcomes[f"{outcome}:{label}" if label else outcome] += n
            if outcome == "applied":
                m.applied.inc(n)
            elif outcome == "duplicate":
                m.duplicates.labels(kind=label).inc(n)
            else:
                m.cleaned.labels(rule=label).inc(n)
        result.users = len(results)
        crashpoints.reached("ingest", 3)
        result.marked = self.store.store_texts(updates, rfm, versions)        # step 3
        m.dirty_marks.inc(result.marked)
        offsets: dict[TopicPartition, int] = {}  # the next offset to read
        for record in prepared.records:
            offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
        crashpoints.reached("ingest", 4)
        commit(offsets)                                                       # step 4
        return result

    # ---- the loop ----------------------------------------------------------------------

    def _commit(self, offsets: dict) -> None:
        """Step 4 (``OffsetCommits``: a commit refused in a rebalance is made again)."""
        assert self._offsets is not None, "commit before run() connected the consumer"
        self._offsets.commit(offsets)

    def _update_gauges(self) -> None:
        now = time.monotonic()
        if now - self._last_gauges < 1.0:
            return
        self._last_gauges = now
        consumer = self._consumer
        self.metrics.lag.clear()  # partitions revoked in a rebalance drop out
        assignment = consumer.assignment()
        self.metrics.assigned.set(len(assignment))
        for tp in assignment:
            high, pos = consumer.highwater(tp), consumer.position(tp)
            if high is not None and pos is not None:  # None: not fetched from yet
                self.metrics.lag.labels(partition=str(tp.partition)).set(max(0, high - pos))
        self.metrics.dirty_users.set(self.store.dirty_count())

    def stop(self) -> None:
        """Ask ``run`` to finish the batch in hand, commit, leave the group and return."""
        self.stop_event.set()

    def close(self) -> None:
        """Nothing left to release: ``run`` closes its Kafka clients itself."""

    def _connect_kafka(self) -> Any:
        cfg = self.cfg
        return self.kafka.consumer(
            group_id=cfg.group_id, max_poll_records=cfg.max_poll_records,
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
            session_timeout_ms=cfg.session_timeout_ms,
            fetch_max_bytes=max(cfg.max_partition_fetch_bytes, 8 * 1024 * 1024))

    def run(self, idle_exit_s: float | None = None, max_records: int | None = None
            ) -> RunStats:
        """Consume until stopped (signal, ``stop_event``), idle or ``max_records`` read."""
        cfg = self.cfg
        check_redis(self.redis)
        try:
            self._consumer = self._connect_kafka()
        except KafkaClientError as exc:
            raise InfraError(f"cannot reach Kafka at {self.settings.kafka.bootstrap_servers}: "
                             f"{exc}") from None
        self._consumer.subscribe([self.settings.topics.events])
        self._offsets = offsets = OffsetCommits(self._consumer)
        try:
            self._producer = self.dead_letters.producer = self.kafka.producer()
        except KafkaClientError as exc:
            self._consumer.close()
            raise InfraError(f"cannot reach Kafka: {exc}") from None
        stats = RunStats()
        idle_since = time.monotonic()
        consumed = 0
        log.info("ingest consuming %s as group %s", self.settings.topics.events, cfg.group_id)
        try:
            while not self.stop_event.is_set():
                records = self._consumer.poll(timeout_ms=cfg.poll_timeout_ms,
                                              max_records=cfg.max_poll_records)
                prepared = None
                if records:
                    if stats.first_at is None:
                        stats.first_at = time.monotonic()
                    consumed += len(records)
                    idle_since = time.monotonic()
                    prepared = self._prepare_or_none(records)
                self._complete(stats)  # the previous batch: steps 3 and 4
                if offsets.pending:
                    offsets.retry()  # refused in a rebalance that this poll completed
                if prepared is not None:
                    self._send(prepared, stats)  # this batch: step 2, replies read later
                elif records:
                    self._sync(records, stats)
                elif not self._consumer.assignment():
                    idle_since = time.monotonic()  # still joining the group: not idle yet
                elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
                self._update_gauges()
                if max_records is not None and consumed >= max_records:
                    break
            self._complete(stats)
            offsets.retry()
        finally:
            self._consumer.close()
            self._producer.close(timeout=10)
            self._topic_ids.close()
        log.info("ingest stopped after %d records in %d batches", stats.records, stats.batches)
        return stats

    # Pipelining: batch N's script calls are sent (step 2) and their replies read only
    # after batch N+1 was polled and prepared (step 1), so Redis works while Python does.
    # Batch N is still finished (steps 3, 4) before batch N+1's calls are sent. When the
    # group rebalanced meanwhile, batch N's commit may be refused: a partition that moved
    # is redelivered by its new owner and skipped by its offset watermarks; one this
    # consumer kept is committed again (``OffsetCommits``: kafka-python keeps its position).

    def _prepare_or_none(self, records: Sequence[Any]) -> Prepared | None:
        try:
            return self.prepare(records)
        except (redis.RedisError, KafkaClientError) as exc:
            log.warning("preparing a batch failed (%s); handling it synchronously", exc)
            return None

    def _send(self, prepared: Prepared, stats: RunStats) -> None:
        started = time.perf_counter()
        crashpoints.reached("ingest", 2)
        try:
            inflight = self.store.send_apply(prepared.by_user) if prepared.by_user else None
        except redis.RedisError as exc:
            log.warning("sending a batch to Redis failed (%s); retrying synchronously", exc)
            self._sync(prepared.records, stats)
            return
        self._inflight = (prepared, inflight, started)

    def _complete(self, stats: RunStats) -> None:
        """Finish the batch in flight, if any (steps 2's acknowledgement, 3 and 4)."""
        if self._inflight is None:
            return
        prepared, inflight, started = self._inflight
        self._inflight = None
        try:
            results = self.store.collect(inflight) if inflight is not None else {}
            result = self.finish(prepared, results, self._commit)
        except (redis.RedisError, KafkaClientError) as exc:
            log.warning("finishing a batch failed (%s); retrying synchronously", exc)
            self._sync(prepared.records, stats)
            return
        self._count(stats, result, started)

    def _sync(self, records: Sequence[Any], stats: RunStats) -> None:
        started = time.perf_counter()
        result = self._handle_with_retry(records)
        if result is None:
            return  # stopped while retrying: nothing committed, redelivered later
        self._count(stats, result, started)

    def _count(self, stats: RunStats, result: BatchResult, started: float) -> None:
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        stats.last_at = time.monotonic()
        stats.records += result.records
        stats.batches += 1
        stats.outcomes.update(result.outcomes)

    def _handle_with_retry(self, records: Sequence[Any]) -> BatchResult | None:
        """``handle_batch`` with backoff while Redis or Kafka are unavailable (doubling from
        0.5 s to at most 10 s, as the encoder does: a service resumes within 10 s of its
        dependency's return, however long the outage)."""
        delay = 0.5
        while True:
            try:
                return self.handle_batch(records, self._commit)
            except (redis.RedisError, KafkaClientError) as exc:
                log.error("batch failed (%s: %s); retrying in %.1fs", type(exc).__name__,
                          exc, delay)
                if self.stop_event.wait(delay):
                    return None
                delay = min(delay * 2, 10.0)
