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
from segstream.kafka_client import Admin, kafka_clients
from segstream.keys import Keys
from segstream.metrics import ServiceMetrics
from segstream.redis_io import check_redis, redis_client
from segstream.state_epoch import StateEpoch

Check = Callable[[], None]
_log = logging.getLogger(__name__)


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


def _connect_admin(settings: KafkaSettings, timeout_ms: int) -> Admin:
    """An admin client that has reached the cluster, or ``InfraError`` with a one-line
    reason (a rejected SASL login says so instead of timing out vaguely)."""
    return kafka_clients(settings).connect_admin(timeout_ms)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def check_kafka(settings: KafkaSettings, timeout_ms: int = 10_000) -> None:
    """Raise ``InfraError`` (one line) unless the cluster answers a metadata request.

    Like ``check_redis``: a wrong SASL password says so instead of timing out vaguely.
    """
    admin = _connect_admin(settings, timeout_ms)
    try:
        admin.list_topics()
    except Exception as exc:
        raise InfraError(f"Kafka at {settings.bootstrap_servers} did not answer a metadata "
                         f"request: {_one_line(exc)}") from None
    finally:
        with contextlib.suppress(Exception):
            admin.close()


class _KafkaMetadataCheck:
    """A metadata request over one long-lived admin connection, rebuilt after a failure."""

    def __init__(self, settings: KafkaSettings, timeout_ms: int) -> None:
        self.settings = settings
        self.timeout_ms = timeout_ms
        self._admin: Admin | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._admin is None:
                self._admin = _connect_admin(self.settings, self.timeout_ms)
            try:
                self._admin.list_topics()
            except Exception as exc:
                self.close()
                raise InfraError(f"Kafka at {self.settings.bootstrap_servers} did not answer "
                                 f"a metadata request: {_one_line(exc)}") from None

    def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing to close
                self._admin.close()
            self._admin = None


def kafka_check(settings: KafkaSettings, timeout_ms: int = 3000) -> Check:
    """Ask the Kafka cluster for its metadata (SASL/SSL settings included). The reason it
    reports names neither the broker nor the user (``/healthz`` is unauthenticated); the
    full one goes to the log."""
    inner = _KafkaMetadataCheck(settings, timeout_ms)

    def check() -> None:
        try:
            inner()
        except InfraError as exc:
            _log.warning("health: %s", exc)
            text = str(exc)
            why = ("rejected the login" if "rejected" in text or "did not complete" in text
                   else "did not answer a metadata request")
            raise InfraError(f"Kafka {why} (details in the service log)") from None

    return check


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
                   client: redis.Redis | None = None, metrics: ServiceMetrics | None = None,
                   state: StateEpoch | None = None, **extra: Check) -> HealthChecks:
    """The usual checks of a service: its Kafka cluster and/or its Redis, whether Redis
    still holds segstream's data (``state``: the service's ``StateEpoch``, else one is
    made, its alarm metrics on ``metrics``), and the service's own ``extra`` checks."""
    checks: dict[str, Check] = {}
    if kafka:
        checks["kafka"] = kafka_check(settings.kafka)
    if redis_:
        conn = client if client is not None else redis_client(settings.redis)
        checks["redis"] = redis_check(conn)
        if state is None:
            state = StateEpoch(conn, Keys(settings.redis.key_prefix), metrics)
        checks["state"] = state.check
    return HealthChecks(**checks, **extra)
