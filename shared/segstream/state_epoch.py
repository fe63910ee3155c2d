"""Noticing that Redis lost its data: the state epoch sentinel (``Keys.state_epoch``).

The first service to reach an empty Redis writes a hash with a random ``id``; every
service remembers the id it saw. When the hash later is gone (FLUSHALL, a restart without
AOF, a failover to an empty replica) or holds another id, the data it stood for is gone
too: the watcher that notices writes a new id with ``lost`` (the reason) and ``lost_ms``,
so every service — and every restarted one — reports it: ``/healthz`` turns unhealthy
with the reason, ``segstream_state_data_lost`` is 1 and ``segstream_state_lost_total`` counts
the detections. A service that has evidence of earlier data a fresh Redis cannot have
(the segmenter: entries on the catalog topic, no model state) declares the loss itself
(``declare_lost``). A loss already marked keeps its id until acknowledged, and each new
id names the one it replaces (``previous``), so a process that was not looking while a
loss was marked and acknowledged does not declare it again. After repairing (replaying
the events topic, a rebuild), an operator acknowledges it with ``HDEL <prefix>:epoch lost
lost_ms``; services turn healthy again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import redis

from segstream.errors import InfraError
from segstream.keys import Keys
from segstream.metrics import ServiceMetrics
from segstream.redis_io import decode_fields

log = logging.getLogger(__name__)


class StateEpoch:
    """One process's watch on the epoch sentinel; ``check`` raises while data is lost."""

    def __init__(self, client: redis.Redis, keys: Keys,
                 metrics: ServiceMetrics | None = None) -> None:
        self.client = client
        self.key = keys.state_epoch()
        self.seen: str | None = None
        self._lock = threading.RLock()
        self._counted: str | None = None
        self.lost_gauge = metrics.gauge(
            "state_data_lost", "1 while Redis has lost data that segstream had written "
            "(see /healthz for the reason)") if metrics else None
        self.lost_total = metrics.counter(
            "state_lost_total", "Times this process found that Redis lost its data"
        ) if metrics else None

    def check(self) -> None:
        """Raise ``InfraError`` with the reason while the data is marked lost."""
        with self._lock:
            raw = decode_fields(self.client.hgetall(self.key))
            current = raw.get("id", "")
            if not current:
                if self.seen is None:  # first start on this Redis: our generation begins
                    self.client.hsetnx(self.key, "id", uuid.uuid4().hex)
                    self.client.hsetnx(self.key, "created_ms", int(time.time() * 1000))
                    raw = decode_fields(self.client.hgetall(self.key))
                    current = raw.get("id", "")
                else:
                    self._mark(f"Redis lost its data: the state epoch {self.seen} vanished "
                               f"(a flush, or a restart without persistence)")
                    return self.check()
            elif self.seen is not None and current != self.seen and "lost" not in raw:
                if raw.get("previous") != self.seen:
                    self._mark(f"Redis lost its data: the state epoch changed from "
                               f"{self.seen} to {current}")
                    return self.check()
                # a loss declared and acknowledged while this process was not looking:
                # counted, not declared again (that would undo the acknowledgement)
                log.warning("Redis lost its data while this process was not looking; it was "
                            "acknowledged meanwhile (state epoch %s)", current)
                self._count(current)
            self.seen = current
            reason = raw.get("lost", "")
            if self.lost_gauge is not None:
                self.lost_gauge.set(1 if reason else 0)
            if reason:
                self._count(current)
                raise InfraError(reason)

    def _count(self, epoch: str) -> None:
        if self.lost_total is not None and self._counted != epoch:
            self.lost_total.inc()  # once per loss this process saw
            self._counted = epoch

    def declare_lost(self, reason: str) -> None:
        """Mark the data lost (evidence found elsewhere, e.g. on a Kafka topic)."""
        with self._lock:
            self._mark(reason)

    def _mark(self, reason: str) -> None:
        """A new epoch id with the reason, naming the id it replaces (``previous``), so a
        process that slept through the loss and its acknowledgement recognises it. A loss
        already marked and not yet acknowledged keeps its id: one loss, one epoch (a new id
        then would look like another loss to processes that saw only the first)."""
        raw = decode_fields(self.client.hgetall(self.key))
        if raw.get("id") and raw.get("lost"):
            log.error("%s (already marked in %s: %s)", reason, self.key, raw["lost"])
            self.seen = raw["id"]
            return
        new = uuid.uuid4().hex
        log.error("%s; marked in %s (clear with HDEL %s lost lost_ms once repaired)",
                  reason, self.key, self.key)
        now = int(time.time() * 1000)
        self.client.hset(self.key, mapping={"id": new, "created_ms": now, "lost": reason,
                                            "lost_ms": now, "previous": self.seen or ""})
        self.seen = new
