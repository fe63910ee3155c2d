"""Metrics helper: one registry per service (never the global one) and its HTTP endpoint.

Names follow Prometheus conventions: the ``segstream_`` prefix, base units
(``_seconds``, ``_bytes``, ``_total``), labels from small fixed sets (never a user id).
Each service builds its own metrics module on top of ``ServiceMetrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest

PREFIX = "segstream"


class ServiceMetrics:
    """A per-service registry with helpers that prefix names and pre-create labels."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()

    def counter(self, name: str, doc: str, labels: dict[str, tuple[str, ...]] | None = None
                ) -> Counter:
        """A counter; every combination of the given label values starts at zero."""
        metric = Counter(f"{PREFIX}_{name}", doc, list(labels or {}), registry=self.registry)
        _precreate(metric, labels)
        return metric

    def gauge(self, name: str, doc: str, labelnames: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, list(labelnames), registry=self.registry)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(f"{PREFIX}_{name}", doc, buckets=buckets, registry=self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``addr:port`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` returns)."""
        return generate_latest(self.registry)


def _precreate(metric: Counter, labels: dict[str, tuple[str, ...]] | None) -> None:
    if not labels:
        return
    names = list(labels)

    def walk(i: int, chosen: dict[str, str]) -> None:
        if i == len(names):
            metric.labels(**chosen)
            return
        for value in labels[names[i]]:
            walk(i + 1, {**chosen, names[i]: value})

    walk(0, {})
