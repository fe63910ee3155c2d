"""Health checks behind each service's ``/healthz``: real round trips to Kafka and Redis.

A check is a callable that returns quietly when its dependency answers and raises
``InfraError`` with a one-line reason when it does not. ``HealthChecks`` runs several
of them and is the ``health=`` callable that ``ServiceMetrics.serve`` takes::

    health = HealthChecks(kafka=kafka_check(settings.kafka), redis=redis_check(client))
    metrics.serve(port, health=health)

Every check runs on each probe (no cached answers), one probe at a time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from segstream.config import KafkaSettings, RedisSettings, Settings
from segstream.errors import InfraError
from segstream.kafka_io import KafkaClients
from segstream.redis_io import check_redis, redis_client

Check = Callable[[], None]


class HealthError(InfraError):
    """One or more checks failed; ``checks`` maps each check name to "ok" or its reason."""

    def __init__(self, checks: dict[str, str]) -> None:
        failed = "; ".join(f"{name}: {why}" for name, why in checks.items() if why != "ok")
        super().__init__(failed)
        self.checks = checks


def redis_check(client: redis.Redis | RedisSettings) -> Check:
    """PING Redis (with the client's ACL user, password and TLS settings)."""
    conn = redis_client(client) if isinstance(client, RedisSettings) else client

    def check() -> None:
        check_redis(conn)

    return check


class _KafkaMetadataCheck:
    """A metadata request over one long-lived admin connection, rebuilt after a failure."""

    def __init__(self, settings: KafkaSettings, timeout_ms: int) -> None:
        self.settings = settings.model_copy(update={"request_timeout_ms": max(timeout_ms, 1000)})
        self.timeout_ms = timeout_ms
        self._admin: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        kafka_log = logging.getLogger("kafka")
        before = kafka_log.level
        kafka_log.setLevel(logging.CRITICAL)  # refused connections are the reason we return
        try:
            return KafkaClients(self.settings).admin(
                bootstrap_timeout_ms=self.timeout_ms,
                request_timeout_ms=self.settings.request_timeout_ms,
                reconnect_backoff_max_ms=1000,
            )
        finally:
            kafka_log.setLevel(before)

    def __call__(self) -> None:
        where = self.settings.bootstrap_servers
        with self._lock:
            try:
                if self._admin is None:
                    self._admin = self._connect()
                self._admin.list_topics()
            except Exception as exc:
                self.close()
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InfraError(
                    f"Kafka at {where} did not answer a metadata request: {reason}"
                ) from None

    def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing to close
                self._admin.close()
            self._admin = None


def kafka_check(settings: KafkaSettings, timeout_ms: int = 3000) -> Check:
    """Ask the Kafka cluster for its metadata (SASL/SSL settings included)."""
    return _KafkaMetadataCheck(settings, timeout_ms)


class HealthChecks:
    """Named checks run together; the ``health=`` callable of ``ServiceMetrics.serve``.

    Returns ``{"checks": {name: "ok"}, "seconds": ...}`` when all pass; raises
    ``HealthError`` naming every failed check otherwise.
    """

    def __init__(self, **checks: Check) -> None:
        self.checks = checks
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            t0 = time.perf_counter()
            results: dict[str, str] = {}
            for name, check in self.checks.items():
                try:
                    check()
                    results[name] = "ok"
                except Exception as exc:
                    results[name] = str(exc).splitlines()[0] if str(exc) else repr(exc)
            if any(v != "ok" for v in results.values()):
                raise HealthError(results)
            return {"checks": results, "seconds": round(time.perf_counter() - t0, 4)}


def service_health(settings: Settings, *, kafka: bool = True, redis_: bool = True,
                   client: redis.Redis | None = None) -> HealthChecks:
    """The usual checks of a service: its Kafka cluster and/or its Redis."""
    checks: dict[str, Check] = {}
    if kafka:
        checks["kafka"] = kafka_check(settings.kafka)
    if redis_:
        checks["redis"] = redis_check(client if client is not None else settings.redis)
    return HealthChecks(**checks)
