"""Prometheus metrics of the read API, in its own registry (never a user id as a label)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from segstream.metrics import ServiceMetrics

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ApiMetrics:
    """``segstream_api_request_seconds{route, status}``: route = the route template
    (``/v1/users/{user_id}``, or ``unmatched``), status = ``2xx`` / ``4xx`` / ``5xx``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.base = ServiceMetrics("api", registry)
        self.latency = Histogram("segstream_api_request_seconds", "Read API request latency",
                                 ["route", "status"], buckets=LATENCY_BUCKETS,
                                 registry=self.base.registry)

    def exposition(self) -> bytes:
        return self.base.exposition()


class LatencyMiddleware:
    """Pure ASGI middleware: times every HTTP request into ``ApiMetrics.latency``."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            self.metrics.latency.labels(getattr(route, "path", "unmatched"),
                                        f"{status[0] // 100}xx").observe(
                time.perf_counter() - t0)
