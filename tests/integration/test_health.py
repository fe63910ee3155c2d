"""``/metrics`` + ``/healthz`` against the real local Kafka and Redis, and against dead ports."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from segstream.config import Settings
from segstream.health import HealthChecks, HealthError, kafka_check, redis_check, service_health
from segstream.metrics import ServiceMetrics

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def metrics() -> ServiceMetrics:
    m = ServiceMetrics("probe")
    m.counter("probe_events_total", "Events seen.", {"kind": ("a", "b")}).labels(kind="a").inc(3)
    return m


def test_serve_without_health_is_backward_compatible(metrics: ServiceMetrics) -> None:
    server = metrics.serve(0)
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        status, body = get(f"{base}/metrics")
        assert status == 200
        assert b'segstream_probe_events_total{kind="a"} 3.0' in body
        assert b'segstream_probe_events_total{kind="b"} 0.0' in body
        status, body = get(f"{base}/healthz")
        assert status == 200 and json.loads(body) == {"service": "probe", "status": "ok"}
    finally:
        server.shutdown()
        server.server_close()


def test_healthz_passes_with_real_kafka_and_redis(infra: Settings, metrics: ServiceMetrics
                                                  ) -> None:
    server = metrics.serve(0, health=service_health(infra))
    try:
        status, body = get(f"http://127.0.0.1:{server.server_port}/healthz")
        doc = json.loads(body)
        assert status == 200, doc
        assert doc["status"] == "ok" and doc["service"] == "probe"
        assert doc["checks"] == {"kafka": "ok", "redis": "ok"}
        # /metrics still served next to it
        assert get(f"http://127.0.0.1:{server.server_port}/metrics")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_healthz_503_names_each_dead_dependency(infra: Settings, metrics: ServiceMetrics
                                                ) -> None:
    dead_kafka, dead_redis = free_port(), free_port()
    kafka = infra.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{dead_kafka}"})
    redis_ = infra.redis.model_copy(update={"port": dead_redis, "socket_timeout_s": 2.0})
    health = HealthChecks(kafka=kafka_check(kafka, timeout_ms=2000), redis=redis_check(redis_))
    server = metrics.serve(0, health=health)
    try:
        status, body = get(f"http://127.0.0.1:{server.server_port}/healthz")
        doc = json.loads(body)
        assert status == 503, doc
        assert doc["status"] == "unhealthy"
        assert f"127.0.0.1:{dead_kafka}" in doc["checks"]["kafka"]
        assert "metadata" in doc["checks"]["kafka"]
        assert "Redis is not reachable" in doc["checks"]["redis"]
        assert "\n" not in doc["reason"]
    finally:
        server.shutdown()
        server.server_close()


def test_one_dead_dependency_fails_the_whole_probe(infra: Settings) -> None:
    redis_ = infra.redis.model_copy(update={"port": free_port(), "socket_timeout_s": 2.0})
    health = HealthChecks(kafka=kafka_check(infra.kafka), redis=redis_check(redis_))
    with pytest.raises(HealthError) as err:
        health()
    assert err.value.checks["kafka"] == "ok"
    assert err.value.checks["redis"] != "ok"


def test_listen_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                   metrics: ServiceMetrics) -> None:
    from segstream.config import load_settings

    monkeypatch.setenv("SEGSTREAM_METRICS_ADDR", "127.0.0.2")
    load_settings()  # the variable is not a settings field, and settings accept it
    server = metrics.serve(0)
    try:
        port = server.server_port
        assert server.server_address[0] == "127.0.0.2"
        assert get(f"http://127.0.0.2:{port}/metrics")[0] == 200
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    finally:
        server.shutdown()
        server.server_close()
