"""The encoder's view of its queues: back-pressure from the ``embedded`` stream and the
queue-depth gauges, each read from Redis at most once per interval."""

from __future__ import annotations

import logging
import time

from segstream_services.encoder.claims import ClaimQueue
from segstream_services.encoder.metrics import EncoderMetrics

log = logging.getLogger("segstream_services.encoder.service")


class QueueWatch:
    """Reads the stream length and the dirty/claimed depths for one worker."""

    def __init__(self, queue: ClaimQueue, metrics: EncoderMetrics, stream_maxlen: int) -> None:
        self.queue = queue
        self.metrics = metrics
        self.stream_maxlen = stream_maxlen
        self._depth_at = 0.0
        self._stream_at = 0.0
        self._stream_len = 0
        self._full = False

    def stream_full(self, every_s: float = 1.0) -> bool:
        """Back-pressure: True while the ``embedded`` stream holds ``stream_maxlen`` entries
        or more (XLEN at most once per ``every_s``, plus the entries this worker appended
        since, so one worker overshoots by less than one batch); the worker then claims
        nothing and users wait, coalesced, in the dirty queue until the segmenter catches
        up."""
        if time.monotonic() - self._stream_at >= every_s:
            self._stream_at = time.monotonic()
            self._stream_len = self.queue.stream_length()
        n = self._stream_len
        self.metrics.stream_entries.set(n)
        full = n >= self.stream_maxlen
        if full and not self._full:
            log.warning("the embedded stream holds %d entries (encoder.stream_maxlen=%d): "
                        "not claiming until the segmenter catches up", n, self.stream_maxlen)
        self._full = full
        self.metrics.backpressure.set(int(full))
        return full

    def appended(self, entries: int) -> None:
        """Count entries this worker appended to the stream until the next XLEN."""
        self._stream_len += entries

    def update_depth(self, every_s: float = 1.0) -> None:
        """Refresh the queue-depth gauges (at most once per ``every_s``)."""
        if time.monotonic() - self._depth_at < every_s:
            return
        self._depth_at = time.monotonic()
        dirty, claimed, age = self.queue.depth()
        self.metrics.queue_depth.labels(queue="dirty").set(dirty)
        self.metrics.queue_depth.labels(queue="claimed").set(claimed)
        self.metrics.oldest_dirty_age.set(age)
