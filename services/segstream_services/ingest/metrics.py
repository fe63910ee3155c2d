"""Prometheus metrics of the ingest service (prefix ``segstream_``, base units, no user ids)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from segstream.events import REASONS
from segstream.metrics import ServiceMetrics

CLEANING_RULES = ("bot_rate", "absurd_value", "future", "too_old", "outside_window")
DUPLICATE_KINDS = ("event_id", "redelivery")
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestMetrics:
    """Counters start at zero for every label value, so dashboards see them at once."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        m = ServiceMetrics("ingest", registry)
        self.base = self.service = m  # ``base`` as in the other services' metrics
        self.consumed = m.counter("ingest_records_consumed_total", "Kafka records consumed.")
        self.valid = m.counter("ingest_records_valid_total", "Records that passed validation.")
        self.dead_lettered = m.counter(
            "ingest_records_dead_lettered_total", "Invalid records sent to the DLQ, by reason.",
            {"reason": REASONS})
        self.duplicates = m.counter(
            "ingest_records_duplicate_total",
            "Valid records skipped as duplicates: a seen event id, or a Kafka redelivery.",
            {"kind": DUPLICATE_KINDS})
        self.cleaned = m.counter(
            "ingest_records_cleaned_total", "Valid records dropped by a cleaning rule.",
            {"rule": CLEANING_RULES})
        self.applied = m.counter("ingest_events_applied_total",
                                 "Events applied to the per-user features.")
        self.texts_changed = m.counter("ingest_texts_changed_total",
                                       "Feature texts that changed and were stored.")
        self.dirty_marks = m.counter("ingest_dirty_marks_total",
                                     "Dirty marks sent to the encoder queue (ZADD NX: a "
                                     "queued user stays queued once).")
        self.batch_seconds = m.histogram(
            "ingest_batch_processing_seconds",
            "Seconds from a polled batch to its committed offsets.", BATCH_BUCKETS)
        self.lag = m.gauge("ingest_consumer_lag_records",
                           "Records between the committed position and the partition end.",
                           ("partition",))
        self.assigned = m.gauge(
            "ingest_assigned_partitions",
            "Partitions of the events topic this consumer holds (0 in every replica for "
            "long: nobody reads the topic).")
        self.dirty_users = m.gauge("ingest_dirty_users", "Users waiting in the encoder queue.")
        self.dlq_failures = m.counter(
            "ingest_dlq_produce_failures_total",
            "Batch attempts whose dead letters the broker did not all take (retried).")
        self.dlq_blocked = m.gauge(
            "ingest_dlq_blocked", "1 while ingest is blocked on dead letters the broker "
            "keeps refusing (/healthz fails its dlq check).")
