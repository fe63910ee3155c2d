"""Metrics helper: one registry per service (never the global one) and its HTTP endpoint.

Names follow Prometheus conventions: the ``segstream_`` prefix, base units
(``_seconds``, ``_bytes``, ``_total``), labels from small fixed sets (never a user id).
Each service builds its own metrics module on top of ``ServiceMetrics``.

``serve(port, health=callable)`` also answers ``GET /healthz``: 200 and a JSON body when
the callable returns, 503 and the reason when it raises (see ``segstream.health``).
The listen address defaults to 127.0.0.1 (also in the container image); deployments set
``SEGSTREAM_METRICS_ADDR`` explicitly (compose and the Kubernetes config: ``0.0.0.0``) so
Prometheus and the kubelet can reach it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import generate_latest

PREFIX = "segstream"
ADDR_ENV = "SEGSTREAM_METRICS_ADDR"

Health = Callable[[], Mapping[str, Any] | None]


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

    def serve(self, port: int, addr: str | None = None, health: Health | None = None
              ) -> WSGIServer:
        """Expose ``/metrics`` (and ``/healthz`` when ``health`` is given) from a daemon thread.

        ``addr`` defaults to ``$SEGSTREAM_METRICS_ADDR`` or 127.0.0.1. Returns the server;
        ``server.shutdown()`` stops it (services just let the daemon thread die with them).
        """
        addr = addr or os.environ.get(ADDR_ENV) or "127.0.0.1"
        app = _App(self.service, make_wsgi_app(self.registry), health)
        server = make_server(addr, port, app, _Server, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name=f"{self.service}-metrics",
                         daemon=True).start()
        return server

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


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape never blocks the process from exiting


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not worth a log line each."""


class _App:
    """WSGI app: ``/healthz`` from the health callable, everything else from prometheus."""

    def __init__(self, service: str, metrics_app: Callable[..., Iterable[bytes]],
                 health: Health | None) -> None:
        self.service = service
        self.metrics_app = metrics_app
        self.health = health

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return self.metrics_app(environ, start_response)
        body: dict[str, Any] = {"service": self.service}
        if self.health is None:
            status, body["status"] = "200 OK", "ok"
        else:
            try:
                details = self.health() or {}
                status, body["status"] = "200 OK", "ok"
                body.update(details)
            except Exception as exc:
                status, body["status"] = "503 Service Unavailable", "unhealthy"
                body["reason"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                checks = getattr(exc, "checks", None)
                if isinstance(checks, dict):
                    body["checks"] = checks
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store")])
        return [data]
