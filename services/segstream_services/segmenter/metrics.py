"""Prometheus metrics of the segmenter (``/metrics`` on ``segmenter.metrics_port``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from segstream.metrics import ServiceMetrics
from segstream.segmentation import Assignment, OnlineSegmenter

OUTCOMES = ("processed", "duplicate", "coalesced", "applied-before", "missing-embedding",
            "model-mismatch", "invalid")
REASONS = ("first", "moved", "previous-retired")
LINEAGE = ("birth", "split", "merge", "retire", "family-birth", "family-retire", "refit")
# sub-second to an hour: the bar is p99 <= 2 s; replays of history land in +Inf
FRESHNESS_BUCKETS = (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 900, 3600)


class SegmenterMetrics:
    """Segment sizes, changes, churn, centroid shift, inertia estimate and batch timings."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        m = ServiceMetrics("segmenter", registry)
        self.base = m
        self.entries = m.counter("segmenter_entries_total",
                                 "Stream entries handled, by outcome", {"outcome": OUTCOMES})
        self.changes = m.counter("segment_changes_total",
                                 "Change records published, by reason", {"reason": REASONS})
        self.assignments = m.counter("segmenter_assignments_total",
                                     "Users assigned (changed or not)")
        self.lineage = m.counter("segment_lineage_events_total",
                                 "Lineage events, by kind", {"event": LINEAGE})
        self.catalog = m.counter("segment_catalog_records_total",
                                 "Catalog records published")
        self.size = m.gauge("segment_size_users", "Users currently in each segment",
                            ("segment",))
        self.active = m.gauge("segments_active", "Active fine segments")
        self.churn = m.gauge("segment_churn_ratio",
                             "Share of re-assigned users that moved, last batch")
        self.shift = m.gauge("segment_centroid_shift",
                             "Largest centroid movement of the last update (L2)")
        self.inertia = m.gauge("segment_inertia_estimate",
                               "EWMA of the mean squared distance to the nearest centroid")
        self.buffered = m.gauge("segmenter_cold_start_buffered_users",
                                "Users buffered before the first fit")
        self.version = m.gauge("segment_centroids_version", "Centroids version")
        self.batch = m.histogram("segmenter_batch_seconds", "Time to handle one batch",
                                 (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.freshness = m.histogram(
            "freshness_seconds", "Event time of the user's newest event to its change "
            "record acknowledged by Kafka", FRESHNESS_BUCKETS)
        self.trimmed = m.counter("segmenter_stream_trimmed_total",
                                 "Acknowledged stream entries trimmed from the stream")
        self.group_recreated = m.counter(
            "segmenter_group_recreated_total",
            "Times the stream's consumer group was gone (NOGROUP) and re-created")
        self._sized: set[str] = set()

    def sizes(self, sizes: dict[str, int]) -> None:
        """Set the size gauges; retired segments' series are removed."""
        for sid in self._sized - set(sizes):
            self.size.remove(sid)
        for sid, n in sizes.items():
            self.size.labels(sid).set(n)
        self._sized = set(sizes)

    def observe_batch(self, model: OnlineSegmenter, assignments: list[Assignment],
                      changes: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        """Counters and gauges after one handled batch."""
        self.assignments.inc(len(assignments))
        for r in changes:
            self.changes.labels(r["explanation"]["reason"]).inc()
        for e in events:
            self.lineage.labels(e["event"]).inc()
        seen_before = [a for a in assignments if a.previous_segment_id is not None]
        if seen_before:
            self.churn.set(sum(a.changed for a in seen_before) / len(seen_before))
        self.sizes({sid: model.segments[sid].size for sid in model.slot_ids})
        self.active.set(len(model.slot_ids))
        self.shift.set(model.last_shift)
        self.inertia.set(model.inertia)
        self.buffered.set(len(model.buffer))
        self.version.set(model.version)
