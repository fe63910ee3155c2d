"""``/metrics`` + ``/healthz`` against the real local Kafka and Redis, and against dead ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from segstream.config import Settings
from segstream.health import HealthChecks, HealthError, kafka_check, redis_check, service_health
from segstream.metrics import ServiceMetrics
from tests.helpers import create_event_topics

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
        assert doc["checks"] == {"kafka": "ok", "redis": "ok", "state": "ok"}
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
        assert "metadata" in doc["checks"]["kafka"]  # the reason, but not where or who:
        assert str(dead_kafka) not in body.decode()  # /healthz is unauthenticated
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


def wait_for_health(url: str, proc: subprocess.Popen[str], deadline_s: float = 120) -> dict:
    """Poll ``url`` until it answers 200 (the service may still be starting)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            status, body = get(url)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
            continue
        if status == 200:
            return json.loads(body)
        time.sleep(0.3)
    raise AssertionError(f"{url} never answered 200")


def service_env(infra: Settings, unique: str) -> dict[str, str]:
    """The environment of a service run of its own: topics, group, key prefix."""
    topics = infra.topics.model_copy(update={"events": f"{unique}.events",
                                             "dlq": f"{unique}.events.dlq"})
    create_event_topics(infra.model_copy(update={"topics": topics}), 1)
    return {**os.environ, "SEGSTREAM_REDIS__KEY_PREFIX": unique,
            "SEGSTREAM_TOPICS__EVENTS": topics.events, "SEGSTREAM_TOPICS__DLQ": topics.dlq,
            "SEGSTREAM_INGEST__GROUP_ID": unique, "SEGSTREAM_SEGMENTER__GROUP": unique}


@pytest.mark.parametrize(("service", "checks"), [
    ("ingest", {"kafka", "redis", "state", "dlq"}),
    ("segmenter", {"kafka", "redis", "state"})])
def test_sigterm_stops_a_running_service_cleanly_after_serving_healthz(
        infra: Settings, unique: str, service: str, checks: set[str]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "segstream_services.cli", "run", service, "--metrics-port",
         str(port)], env=service_env(infra, unique), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        body = wait_for_health(f"http://127.0.0.1:{port}/healthz", proc)
        assert body["service"] == service and set(body["checks"]) == checks
        status, text = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"segstream_" in text
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"{service}: SIGTERM finishes the batch in hand" in err
    assert f"{service} stopped:" in err
    with socket.socket() as probe:  # the metrics server went with the process
        assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("service", ["ingest", "encoder", "segmenter"])
def test_idle_exit_ends_every_service_by_itself(infra: Settings, unique: str,
                                                service: str) -> None:
    env = {**service_env(infra, unique), "SEGSTREAM_ENCODER__DEVICE": "cpu",
           "SEGSTREAM_ENCODER__TORCH_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "segstream_services.cli", "run", service, "--idle-exit", "1",
         "--metrics-port", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{service} running (metrics and health: off; exits after 1s idle)" in done.stderr
    assert f"{service} stopped:" in done.stderr


def test_healthz_turns_unhealthy_when_redis_loses_its_data_until_acknowledged(
        infra: Settings, unique: str, metrics: ServiceMetrics) -> None:
    import redis as redis_lib

    from segstream.keys import Keys
    from segstream.redis_io import redis_client

    settings = infra.model_copy(update={"redis": infra.redis.model_copy(
        update={"key_prefix": unique})})
    client: redis_lib.Redis = redis_client(settings.redis)
    epoch = Keys(unique).state_epoch()
    health = service_health(settings, kafka=False, client=client, metrics=metrics)
    assert health()["checks"] == {"redis": "ok", "state": "ok"}  # first start: epoch made
    assert client.exists(epoch)
    client.delete(epoch)  # what FLUSHALL or a restart without AOF does to it
    with pytest.raises(HealthError) as err:
        health()
    assert err.value.checks["redis"] == "ok"
    assert err.value.checks["state"].startswith("Redis lost its data: the state epoch")
    exposition = metrics.exposition().decode()
    assert "segstream_state_data_lost 1.0" in exposition
    assert "segstream_state_lost_total 1.0" in exposition
    restarted = service_health(settings, kafka=False, client=client)  # a new process
    with pytest.raises(HealthError, match="Redis lost its data"):
        restarted()
    client.hdel(epoch, "lost", "lost_ms")  # the operator acknowledges after repairing
    assert health()["checks"]["state"] == "ok" and restarted()["checks"]["state"] == "ok"
    assert "segstream_state_data_lost 0.0" in metrics.exposition().decode()
    client.delete(epoch)
    client.close()
