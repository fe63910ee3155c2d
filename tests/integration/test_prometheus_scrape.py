"""A real Prometheus (Debian's package) scrapes the three services, run as
``segstream run <service>`` subprocesses on free ports, with deploy/prometheus's rules
loaded; its HTTP API must return the key series: consumer lag, DLQ, encode latency and
segment churn, and the recording rules built on them.

The services use a Redis of their own started with deploy/compose.yaml's ACL (an ACL
user with a password, limited to segstream's keys): the production security settings
carry the whole pipeline, Lua scripts included."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from segstream.config import RedisSettings, Settings
from segstream.kafka_client import kafka_clients
from segstream.kafka_io import ensure_topics, topic_specs
from segstream.redis_io import redis_client
from segstream.synthetic import SyntheticStream
from tests import tooling
from tests.helpers import wait_until
from tests.integration.test_deploy_configs import COMPOSE_ENV, compose_acl_redis

__all__ = ["compose_acl_redis"]  # a fixture used below

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
SERVICES = ("ingest", "encoder", "segmenter")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


class Prometheus:
    """A Prometheus process on a free port with a test copy of deploy's prometheus.yml."""

    def __init__(self, binary: str, promtool: str, workdir: Path, ports: dict[str, int]
                 ) -> None:
        self.port = free_port()
        config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", scrape_timeout="1s",
                                evaluation_interval="1s")
        config["rule_files"] = [str(PROM_DIR / "alerts.yml")]
        for job in config["scrape_configs"]:
            name = job["job_name"].removeprefix("segstream-")
            target = (f"127.0.0.1:{ports[name]}" if name in ports
                      else f"127.0.0.1:{self.port}")
            job.pop("dns_sd_configs", None)
            job["static_configs"] = [{"targets": [target]}]
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_json(url)
        assert self.proc.poll() is None, "prometheus exited"
        return body["data"] if status == 200 and body and body["status"] == "success" else None

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return data["result"] if data else []

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus_bin() -> tuple[str, str]:
    try:
        return tooling.ensure_prometheus()
    except tooling.ToolMissing as exc:
        pytest.skip(f"no Prometheus on this machine: {exc}")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def service_env(settings: Settings, ports: dict[str, int], redis_port: int) -> dict[str, str]:
    t = settings.topics
    return {**os.environ,
            "SEGSTREAM_REDIS__PORT": str(redis_port), "SEGSTREAM_REDIS__USERNAME": "segstream",
            "SEGSTREAM_REDIS__PASSWORD": COMPOSE_ENV["REDIS_PASSWORD"],
            "SEGSTREAM_TOPICS__EVENTS": t.events, "SEGSTREAM_TOPICS__DLQ": t.dlq,
            "SEGSTREAM_TOPICS__SEGMENTS": t.segments, "SEGSTREAM_TOPICS__CATALOG": t.catalog,
            "SEGSTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix,
            "SEGSTREAM_INGEST__GROUP_ID": settings.ingest.group_id,
            "SEGSTREAM_INGEST__METRICS_PORT": str(ports["ingest"]),
            "SEGSTREAM_ENCODER__METRICS_PORT": str(ports["encoder"]),
            "SEGSTREAM_ENCODER__DEVICE": "cpu", "SEGSTREAM_ENCODER__TORCH_THREADS": "1",
            "SEGSTREAM_SEGMENTER__METRICS_PORT": str(ports["segmenter"]),
            "SEGSTREAM_SEGMENTER__K": "4", "SEGSTREAM_SEGMENTER__COLD_START_FACTOR": "2",
            "SEGSTREAM_LOG_LEVEL": "WARNING"}


def test_prometheus_scrapes_the_key_series(infra: Settings, unique: str, tmp_path: Path,
                                           prometheus_bin: tuple[str, str],
                                           procs: list[subprocess.Popen[bytes]],
                                           compose_acl_redis: int) -> None:
    settings = infra.model_copy(update={
        "topics": infra.topics.model_copy(update={
            "events": f"{unique}.events", "dlq": f"{unique}.dlq",
            "segments": f"{unique}.segments", "catalog": f"{unique}.catalog",
            "events_partitions": 3, "segments_partitions": 1}),
        # the compose ACL allows the default prefix only; this Redis is the test's own
        "redis": infra.redis.model_copy(update={"key_prefix": "ss"}),
        "ingest": infra.ingest.model_copy(update={"group_id": f"{unique}.ingest"})})
    clients = kafka_clients(settings.kafka)
    admin = clients.admin()
    try:
        ensure_topics(admin, topic_specs(settings.topics))
    finally:
        admin.close()

    ports = {name: free_port() for name in SERVICES}
    env = service_env(settings, ports, compose_acl_redis)
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in SERVICES}
    for name in SERVICES:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "segstream_services.cli", "run", name], env=env,
            stdout=logs[name], stderr=subprocess.STDOUT))
    prom = Prometheus(prometheus_bin[1], prometheus_bin[0], tmp_path, ports)
    try:
        def up() -> bool:
            got = {r["metric"]["job"]: r["value"][1] for r in prom.query("up")}
            return all(got.get(f"segstream-{n}") == "1" for n in SERVICES)

        wait_until(up, timeout_s=180, interval_s=0.5, what="Prometheus scraping all three")

        stream = SyntheticStream(users=60, days=7, seed=11, end_ms=int(time.time() * 1000),
                                 malformed=0.03)
        producer = clients.producer(linger_ms=20)
        for key, value in stream.records():
            producer.send(settings.topics.events, key=key, value=value)
        producer.flush(timeout=60)
        producer.close()
        malformed = stream.counts["malformed"]
        assert malformed > 0

        # DLQ: Prometheus sees every dead-lettered record, and the recording rule on it
        wait_until(lambda: prom.value("sum(segstream_ingest_records_dead_lettered_total)")
                   == malformed, timeout_s=120, interval_s=0.5, what="DLQ count in Prometheus")
        reasons = prom.query("segstream_ingest_records_dead_lettered_total > 0")
        assert reasons and all("reason" in r["metric"] for r in reasons)
        assert all("user" not in key for r in reasons for key in r["metric"])
        wait_until(lambda: (prom.value("segstream:ingest_dlq_ratio:rate5m") or 0) > 0,
                   timeout_s=60, interval_s=0.5, what="the DLQ ratio recording rule")
        # consumer lag: one series per partition, drained to zero
        wait_until(lambda: len(prom.query("segstream_ingest_consumer_lag_records")) == 3
                   and prom.value("sum(segstream_ingest_consumer_lag_records)") == 0,
                   timeout_s=120, interval_s=0.5, what="consumer lag per partition at 0")
        wait_until(lambda: prom.value("segstream:ingest_consumer_lag_records:sum") == 0,
                   timeout_s=30, interval_s=0.5, what="the lag recording rule at 0")
        # encode latency: the histogram and a p99 over it
        wait_until(lambda: (prom.value("sum(segstream_encoder_encode_seconds_count)") or 0) > 0,
                   timeout_s=180, interval_s=0.5, what="encode latency observations")
        p99 = prom.value("histogram_quantile(0.99, sum by (le) "
                         "(rate(segstream_encoder_encode_seconds_bucket[5m])))")
        assert p99 is not None and math.isfinite(p99) and 0 < p99 < 60, p99
        wait_until(lambda: prom.value('max(segstream_encoder_queue_depth{queue="dirty"})')
                   == 0, timeout_s=180, interval_s=0.5, what="the encoder queue drained")
        # segment churn: changes counted and the churn recording rule evaluated
        wait_until(lambda: (prom.value("sum(segstream_segment_changes_total)") or 0) > 0,
                   timeout_s=180, interval_s=0.5, what="segment changes")
        wait_until(lambda: prom.value("segstream:segment_churn_ratio:rate10m") is not None,
                   timeout_s=60, interval_s=0.5, what="the churn recording rule")
        assert prom.query("segstream_segment_churn_ratio")
        assert (prom.value("max(segstream_segments_active)") or 0) >= 2
        # the alert rules loaded and evaluate cleanly; nothing is firing on a healthy run
        groups = prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {g["name"] for g in groups} == {"segstream-recording", "segstream-alerts"}
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
        firing = [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]
        assert not firing, firing
        # the pipeline's state really is in the ACL-protected Redis
        acl = redis_client(RedisSettings(port=compose_acl_redis, username="segstream",
                                         password=SecretStr(COMPOSE_ENV["REDIS_PASSWORD"])))
        assert next(acl.scan_iter(match="ss:u:*:text", count=1000), None) is not None
        assert acl.hlen(next(acl.scan_iter(match="ss:u:*:emb", count=1000))) > 0
        acl.close()
        # every service answers /healthz next to /metrics
        for name, port in ports.items():
            status, body = http_json(f"http://127.0.0.1:{port}/healthz")
            assert status == 200 and body["status"] == "ok", (name, body)
            # where the service wires its Kafka/Redis checks, each of them passed
            assert all(v == "ok" for v in body.get("checks", {}).values()), (name, body)
    finally:
        prom.stop()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in zip(SERVICES, procs, strict=True):
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        for log in logs.values():
            log.close()
    tails = {n: (tmp_path / f"{n}.log").read_text(errors="replace")[-1500:] for n in SERVICES}
    assert codes == dict.fromkeys(SERVICES, 0), (codes, tails)
