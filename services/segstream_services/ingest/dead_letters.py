"""Dead letters of ingest: the stored record and its headers.

Dead-letter records (``settings.topics.dlq``) keep the original key and value bytes (a
tombstone stays a tombstone) and carry these headers (UTF-8 values):

- ``segstream.reason``            the reason code (``segstream.events.REASONS``)
- ``segstream.detail``            a human-readable detail, at most 200 characters
- ``segstream.source.topic``      the topic the record was read from
- ``segstream.source.partition``  its partition (decimal)
- ``segstream.source.offset``     its offset (decimal)
- ``segstream.source.timestamp``  its Kafka timestamp, epoch ms (decimal)

A value longer than ``events.dlq_max_value_bytes`` (a key longer than ``DLQ_MAX_KEY_BYTES``)
is stored truncated to that prefix, so the dead letter fits the broker's record limit,
with ``segstream.original.size`` / ``segstream.original.sha256`` (the whole value's byte
count and SHA-256, hex) and ``segstream.original.key_size`` / ``.key_sha256`` likewise.

Delivery to the DLQ is at-least-once (a crash before the offset commit produces the same
dead letter again); feature state is effectively once (see ``feature_store``). A dead
letter the broker refuses blocks its batch (dropping it would lose the record): the batch
is retried with backoff, sending again only the dead letters not yet acknowledged; after
``DLQ_UNHEALTHY_AFTER`` failed attempts in a row ``/healthz`` fails its ``dlq`` check and
``segstream_ingest_dlq_blocked`` is 1 until one succeeds
(``segstream_ingest_dlq_produce_failures_total`` counts the failed sends).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from segstream.errors import InfraError, InvalidEvent
from segstream.kafka_client import KafkaClientError
from segstream_services.ingest.metrics import IngestMetrics

DLQ_MAX_KEY_BYTES = 1024
DLQ_UNHEALTHY_AFTER = 3  # failed dead-letter attempts in a row before /healthz fails
DLQ_REMEMBER = 100_000  # positions of acknowledged dead letters kept for retries


def dlq_headers(record: Any, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """The provenance headers of a dead letter (see the module docstring)."""
    return [("segstream.reason", reason.encode()),
            ("segstream.detail", detail[:200].encode("utf-8", "replace")),
            ("segstream.source.topic", record.topic.encode()),
            ("segstream.source.partition", str(record.partition).encode()),
            ("segstream.source.offset", str(record.offset).encode()),
            ("segstream.source.timestamp", str(record.timestamp).encode())]


def _cap(data: bytes | None, limit: int, name: str, headers: list[tuple[str, bytes]]
         ) -> bytes | None:
    if data is None or len(data) <= limit:
        return data
    headers += [(f"segstream.original.{name}size", str(len(data)).encode()),
                (f"segstream.original.{name}sha256", hashlib.sha256(data).hexdigest().encode())]
    return data[:limit]


def dead_letter(record: Any, reason: str, detail: str, max_value_bytes: int
                ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of a record's dead letter: the original bytes, truncated past
    the limits with the original's size and SHA-256 in headers (module docstring)."""
    headers = dlq_headers(record, reason, detail)
    key = _cap(record.key, DLQ_MAX_KEY_BYTES, "key_", headers)
    return key, _cap(record.value, max_value_bytes, "", headers), headers


class DeadLetterSender:
    """Produces a batch's dead letters and remembers which the broker acknowledged, so a
    retried batch sends only the ones that failed (at most ``DLQ_REMEMBER`` positions)."""

    def __init__(self, topic: str, max_value_bytes: int, metrics: IngestMetrics) -> None:
        self.topic = topic
        self.max_value_bytes = max_value_bytes
        self.metrics = metrics
        self.producer: Any = None  # set by the consumer loop once connected
        self._done: dict[tuple[str, int, int], None] = {}  # acknowledged positions
        self._failed = 0  # failed attempts in a row
        self._error = ""

    def send(self, dead_letters: list[tuple[Any, str, InvalidEvent]]) -> None:
        """Produce the (record, reason, error) dead letters not yet acknowledged and wait
        for them; raises ``KafkaClientError`` if any failed."""
        m = self.metrics
        sent: list[tuple[tuple[str, int, int], str, Any]] = []
        failed: KafkaClientError | None = None
        for record, reason, exc in dead_letters:
            pos = (record.topic, record.partition, record.offset)
            if pos in self._done:
                continue
            key, value, headers = dead_letter(record, reason, exc.detail, self.max_value_bytes)
            try:
                sent.append((pos, reason, self.producer.send(
                    self.topic, key=key, value=value, headers=headers)))
            except KafkaClientError as err:  # refused before sending (e.g. too large)
                failed = failed or err
        with contextlib.suppress(KafkaClientError):
            self.producer.flush()
        for pos, reason, future in sent:
            try:
                future.get(timeout=30)  # raises when the broker did not take it
            except KafkaClientError as err:
                failed = failed or err
                continue
            self._done[pos] = None
            m.dead_lettered.labels(reason=reason).inc()
        while len(self._done) > DLQ_REMEMBER:
            del self._done[next(iter(self._done))]
        if failed is None:
            self._failed, self._error = 0, ""
            m.dlq_blocked.set(0)
            return
        self._failed += 1
        self._error = type(failed).__name__
        m.dlq_failures.inc()
        if self._failed >= DLQ_UNHEALTHY_AFTER:
            m.dlq_blocked.set(1)
        raise failed

    def check(self) -> None:
        """The ``dlq`` health check: fails while dead letters keep failing (the batch
        holding them is blocked: dropping them would lose records)."""
        if self._failed >= DLQ_UNHEALTHY_AFTER:
            raise InfraError(f"dead-letter produce failed {self._failed} times in a row "
                             f"({self._error}); ingest is blocked on that batch")
