"""The segmenter's Kafka side: which catalog entries a batch publishes, and sending
records with every ack awaited (``store.SegmentStateWriter`` publishes through it)."""

from __future__ import annotations

import json
import time
from typing import Any

from segstream.records import signature, with_event

Records = list[tuple[str, dict[str, Any]]]


def send_and_wait(producer: Any, topic: str, records: Records, timeout_s: float) -> None:
    """Send ``records`` (key, JSON value) and wait for every ack; raises on a failure."""
    if not records:
        return
    futures = [producer.send(topic, json.dumps(v).encode(), key=k.encode())
               for k, v in records]
    producer.flush(timeout=timeout_s)
    for f in futures:
        f.get(timeout=timeout_s)


class CatalogPicker:
    """Which catalog entries a batch publishes: all every ``refresh_s``, else those a
    lineage event touched or whose content changed since last picked (with the event
    when there is one)."""

    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self._sig: dict[str, str] = {}
        self._full_at = 0.0

    def forget(self) -> None:
        """Forget what was picked (for a batch that was never stored)."""
        self._sig.clear()

    def pick(self, entries: dict[str, dict[str, Any]], events: list[dict[str, Any]],
             counts: list[int]) -> Records:
        """The entries to publish (their number is appended to ``counts``)."""
        full = time.monotonic() - self._full_at > self.refresh_s
        touched = {e["segment_id"]: e for e in events}
        out = []
        for sid, entry in entries.items():
            sig = signature(entry)
            if full or sid in touched or self._sig.get(sid) != sig:
                out.append((sid, with_event(entry, touched[sid]) if sid in touched else entry))
                self._sig[sid] = sig
        if full:
            self._full_at = time.monotonic()
        counts.append(len(out))
        return out
