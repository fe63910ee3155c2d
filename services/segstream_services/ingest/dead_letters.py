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
``service.DLQ_UNHEALTHY_AFTER`` failed attempts in a row ``/healthz`` fails its ``dlq`` check and
``segstream_ingest_dlq_blocked`` is 1 until one succeeds
(``segstream_ingest_dlq_produce_failures_total`` counts the failed sends).
"""

from __future__ import annotations

import hashlib
from typing import Any

DLQ_MAX_KEY_BYTES = 1024


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
