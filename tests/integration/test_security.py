"""Security settings against real servers: Kafka SASL (PLAIN, SCRAM) on a broker with a
SASL_PLAINTEXT listener, Redis ACL users and TLS, and secrets kept out of logs and help."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from segstream.config import KafkaSettings, RedisSettings, Settings, load_settings
from segstream.errors import ConfigError, InfraError
from segstream.health import check_kafka
from segstream.kafka_client import TopicSpec, kafka_clients
from segstream.logs import configure_logging
from segstream.redis_io import Keys, check_redis, redis_client
from segstream_services.dev.local_kafka import LocalKafka, _sasl_overrides
from segstream_services.dev.local_redis import ensure_redis_installed
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

KAFKA_PASSWORD = "k-" + uuid.uuid4().hex[:12]
REDIS_PASSWORD = "r-" + uuid.uuid4().hex[:12]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------ settings pass-through


def test_kafka_clients_map_sasl_and_ssl_settings() -> None:
    settings = KafkaSettings(
        bootstrap_servers="b1:9096,b2:9096", security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password=SecretStr("pw-1"),
        ssl_cafile="/etc/ca.pem", ssl_certfile="/etc/client.pem", ssl_keyfile="/etc/key.pem",
    )
    opts = kafka_clients(settings).common()
    assert opts["bootstrap_servers"] == ["b1:9096", "b2:9096"]
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "svc"
    assert opts["sasl_plain_password"] == "pw-1"
    assert (opts["ssl_cafile"], opts["ssl_certfile"], opts["ssl_keyfile"]) == (
        "/etc/ca.pem", "/etc/client.pem", "/etc/key.pem")
    plain = kafka_clients(KafkaSettings()).common()
    assert plain["security_protocol"] == "PLAINTEXT"
    assert not {"sasl_mechanism", "sasl_plain_password", "ssl_cafile"} & set(plain)


def test_security_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("SEGSTREAM_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("SEGSTREAM_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("SEGSTREAM_KAFKA__SASL_PASSWORD", KAFKA_PASSWORD)
    monkeypatch.setenv("SEGSTREAM_REDIS__USERNAME", "app")
    monkeypatch.setenv("SEGSTREAM_REDIS__PASSWORD", REDIS_PASSWORD)
    monkeypatch.setenv("SEGSTREAM_REDIS__SSL", "true")
    monkeypatch.setenv("SEGSTREAM_REDIS__SSL_CA_CERTS", "/etc/redis-ca.pem")
    s = load_settings()
    assert kafka_clients(s.kafka).common()["sasl_plain_password"] == KAFKA_PASSWORD
    assert s.redis.password is not None
    assert s.redis.password.get_secret_value() == REDIS_PASSWORD
    kwargs = redis_client(s.redis).connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("app", REDIS_PASSWORD)
    assert kwargs["ssl_ca_certs"] == "/etc/redis-ca.pem"
    assert "SSL" in redis_client(s.redis).connection_pool.connection_class.__name__
    # secrets print masked wherever settings are shown
    for shown in (repr(s), str(s), repr(s.kafka), str(s.model_dump()), s.model_dump_json()):
        assert KAFKA_PASSWORD not in shown and REDIS_PASSWORD not in shown


def test_help_never_shows_secrets(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SEGSTREAM_KAFKA__SASL_PASSWORD", KAFKA_PASSWORD)
    monkeypatch.setenv("SEGSTREAM_REDIS__PASSWORD", REDIS_PASSWORD)
    from segstream_services.cli import build_parser, main

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return dict(found[0].choices) if found else {}

    commands: list[list[str]] = [[]]
    for name, sub in subcommands(build_parser()).items():
        commands.append([name])
        commands += [[name, inner] for inner in subcommands(sub)]
    assert ["run", "ingest"] in commands and ["run", "encoder"] in commands
    for args in commands:
        try:
            main([*args, "--help"])
            code: object = None
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:
            pytest.fail(f"segstream {' '.join(args)} --help crashed: {exc!r}")
        out, err = capsys.readouterr()
        assert code == 0, (args, err)
        assert out.startswith("usage: segstream"), args
        assert KAFKA_PASSWORD not in out + err and REDIS_PASSWORD not in out + err, args
    # and through the installed entry point, as an operator runs it
    done = subprocess.run([sys.executable, "-m", "segstream_services.cli", "--help"],
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and KAFKA_PASSWORD not in done.stdout + done.stderr


def test_local_sasl_listener_rejects_unquotable_credentials() -> None:
    base = {"listeners": "PLAINTEXT://127.0.0.1:1", "advertised.listeners": "PLAINTEXT://x:1"}
    local = load_settings().local
    assert _sasl_overrides(local, base) == {}  # off by default
    bad = local.model_copy(update={"kafka_sasl_port": 9094,
                                   "kafka_sasl_users": {"bob": SecretStr('a"b')}})
    with pytest.raises(ConfigError, match="password of 'bob'") as err:
        _sasl_overrides(bad, base)
    assert 'a"b' not in str(err.value)
    with pytest.raises(ConfigError, match="kafka_sasl_users is empty"):
        _sasl_overrides(local.model_copy(update={"kafka_sasl_port": 9094}), base)


# ------------------------------------------------------------ Kafka with SASL_PLAINTEXT


@pytest.fixture(scope="module")
def sasl_broker(infra: Settings) -> Iterator[Settings]:
    """A second broker on free ports with a SASL_PLAINTEXT listener and one user."""
    sasl_port = free_port()
    settings = load_settings(
        local={**infra.local.model_dump(), "kafka_port": free_port(),
               "kafka_controller_port": free_port(), "kafka_sasl_port": sasl_port,
               "kafka_heap_mb": 256, "kafka_sasl_users": {"alice": KAFKA_PASSWORD}},
        # the services' own client settings point at the SASL listener; the start-up
        # probes of segstream up must still use the broker's PLAINTEXT listener
        kafka={"bootstrap_servers": f"127.0.0.1:{sasl_port}",
               "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
               "sasl_username": "alice", "sasl_password": KAFKA_PASSWORD})
    broker = LocalKafka(settings.local)
    shutil.rmtree(broker.dir, ignore_errors=True)  # a stale folder of an earlier run's port
    try:
        broker.start(settings)
        status = broker.status(settings)
        assert status.healthy, status.detail
        assert "SASL_PLAINTEXT listener" in status.extra
        yield settings
    finally:
        broker.stop()
        shutil.rmtree(broker.dir, ignore_errors=True)


def sasl_kafka(settings: Settings, mechanism: str, password: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{settings.local.kafka_sasl_port}",
        security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism, sasl_username="alice",
        sasl_password=SecretStr(password), request_timeout_ms=10_000)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_client_produces_and_consumes(sasl_broker: Settings, unique: str,
                                           mechanism: str, capfd: pytest.CaptureFixture[str]
                                           ) -> None:
    clients = kafka_clients(sasl_kafka(sasl_broker, mechanism, KAFKA_PASSWORD))
    check_kafka(clients.settings)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("DEBUG")  # the most talkative setting: still no password
    # kafka-python logs its whole config (password included) at DEBUG: it stays capped
    assert logging.getLogger("kafka").getEffectiveLevel() >= logging.WARNING
    logging.getLogger("segstream.test").debug("debug logging is on")
    try:
        producer = clients.producer()
        for i in range(20):
            producer.send(unique, key=f"u{i}".encode(), value=f"v{i}".encode())
        producer.flush(timeout=30)
        producer.close()
        consumer = clients.consumer(unique, group_id=unique, consumer_timeout_ms=1000)
        seen: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(seen) < 20 and time.monotonic() < deadline:
            seen += [r.value for r in consumer]
        consumer.close()
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
        logging.getLogger("kafka").setLevel(logging.WARNING)
    assert sorted(seen) == sorted(f"v{i}".encode() for i in range(20))
    out, err = capfd.readouterr()
    assert "debug logging is on" in err
    assert KAFKA_PASSWORD not in out + err


def test_wrong_sasl_password_fails_with_one_clear_line(sasl_broker: Settings) -> None:
    wrong = sasl_kafka(sasl_broker, "PLAIN", "not-" + KAFKA_PASSWORD)
    started = time.monotonic()
    with pytest.raises(InfraError) as err:
        check_kafka(wrong, timeout_ms=5000)
    message = str(err.value)
    # kafka-python sees either the broker's error reply or its close first
    assert ("rejected the PLAIN login of user 'alice'" in message
            or "the PLAIN login of user 'alice' did not complete: wrong user or password"
            in message), message
    assert "\n" not in message and KAFKA_PASSWORD not in message
    assert time.monotonic() - started < 30
    # a closed port is a different, equally plain message
    with pytest.raises(InfraError, match="did not answer a metadata request"):
        check_kafka(wrong.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"}),
                    timeout_ms=2000)


def test_plaintext_listener_still_serves_and_broker_hides_jaas(sasl_broker: Settings) -> None:
    check_kafka(KafkaSettings(bootstrap_servers=f"127.0.0.1:{sasl_broker.local.kafka_port}"))
    broker = LocalKafka(sasl_broker.local)
    props = broker.dir / "server.properties"
    assert props.stat().st_mode & 0o077 == 0, "server.properties holds passwords: owner only"
    assert KAFKA_PASSWORD not in broker.log_path.read_text(errors="replace")
    assert "SASL_PLAINTEXT://127.0.0.1" in props.read_text()


# ------------------------------------------------------------ Redis ACL + TLS


def _start_redis(tmp: Path, lines: list[str], port: int) -> subprocess.Popen[bytes]:
    conf = tmp / f"redis-{port}.conf"
    conf.write_text("\n".join(["bind 127.0.0.1", f"dir {tmp}", "save \"\"",
                               "appendonly no", *lines, ""]))
    conf.chmod(0o600)
    return subprocess.Popen([ensure_redis_installed(), str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server of our own: default user off, user ``app`` with a password."""
    port = free_port()
    proc = _start_redis(tmp_path, [
        f"port {port}", "user default off",
        f"user app on >{REDIS_PASSWORD} ~ss:* ~{{ss:q}}:* &* +@all"], port)
    try:
        wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0,
                   timeout_s=20, what="redis-server with ACLs")
        yield port
    finally:
        _stop(proc)


def test_redis_acl_user_with_the_right_password(acl_redis: int) -> None:
    settings = RedisSettings(port=acl_redis, username="app", password=SecretStr(REDIS_PASSWORD))
    client = redis_client(settings)
    check_redis(client)
    client.set("ss:probe", b"1")
    assert client.get("ss:probe") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):  # the ACL key pattern holds
        client.set("other:probe", b"1")
    client.close()


@pytest.mark.parametrize("username,password", [("app", "wrong-password"), (None, None),
                                               ("nobody", REDIS_PASSWORD)])
def test_redis_wrong_credentials_fail_with_one_clear_line(acl_redis: int, username: str | None,
                                                          password: str | None) -> None:
    settings = RedisSettings(port=acl_redis, username=username,
                             password=SecretStr(password) if password else None)
    client = redis_client(settings)
    with pytest.raises(InfraError) as err:
        check_redis(client)
    message = str(err.value)
    assert "\n" not in message and REDIS_PASSWORD not in message
    assert "Redis rejected the credentials" in message or "NOAUTH" in message \
        or "Authentication required" in message, message
    client.close()


def test_redis_over_tls_with_acl(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    proc = _start_redis(tmp_path, [
        "port 0", f"tls-port {port}", f"tls-cert-file {cert}", f"tls-key-file {key}",
        f"tls-ca-cert-file {cert}", "tls-auth-clients no", "user default off",
        f"user app on >{REDIS_PASSWORD} ~* &* +@all"], port)
    try:
        wait_until(lambda: proc.poll() is not None
                   or socket.socket().connect_ex(("127.0.0.1", port)) == 0,
                   timeout_s=20, what="redis-server with TLS")
        if proc.poll() is not None:
            pytest.skip("this redis-server was built without TLS support")
        good = RedisSettings(port=port, username="app", password=SecretStr(REDIS_PASSWORD),
                             ssl=True, ssl_ca_certs=str(cert))
        client = redis_client(good)
        check_redis(client)
        assert client.connection_pool.get_connection().__class__.__name__ == "SSLConnection"
        client.close()
        no_tls = redis_client(good.model_copy(update={"ssl": False, "socket_timeout_s": 3.0}))
        with pytest.raises(InfraError):
            check_redis(no_tls)
    finally:
        _stop(proc)


def test_ingest_service_runs_over_sasl(sasl_broker: Settings, unique: str,
                                       tmp_path: Path) -> None:
    """``segstream run ingest`` with SASL settings from the environment: its consumer,
    DLQ producer and admin client all log in; nothing in its output shows the password."""
    kafka = sasl_kafka(sasl_broker, "SCRAM-SHA-256", KAFKA_PASSWORD)
    clients = kafka_clients(kafka)
    topics = sasl_broker.topics.model_copy(update={"events": f"{unique}.events",
                                                   "dlq": f"{unique}.dlq"})
    admin = clients.admin()
    try:
        admin.create_topics([TopicSpec(topics.events, 2, {}), TopicSpec(topics.dlq, 1, {})])
    finally:
        admin.close()
    producer = clients.producer()
    now = int(time.time() * 1000)
    for i in range(40):
        event = {"event_id": f"e{i}", "user_id": f"u{i % 4}", "ts": now - 1000 * i,
                 "type": "view", "item_id": f"i{i}", "category": "books"}
        producer.send(topics.events, key=f"u{i % 4}".encode(), value=json.dumps(event).encode())
    producer.send(topics.events, key=b"u0", value=b"{not json")
    producer.flush(timeout=30)
    producer.close()
    env = {**os.environ,
           "SEGSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "SEGSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "SEGSTREAM_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
           "SEGSTREAM_KAFKA__SASL_USERNAME": "alice",
           "SEGSTREAM_KAFKA__SASL_PASSWORD": KAFKA_PASSWORD,
           "SEGSTREAM_TOPICS__EVENTS": topics.events, "SEGSTREAM_TOPICS__DLQ": topics.dlq,
           "SEGSTREAM_REDIS__KEY_PREFIX": unique, "SEGSTREAM_INGEST__GROUP_ID": unique,
           "SEGSTREAM_INGEST__METRICS_PORT": "0", "SEGSTREAM_LOG_LEVEL": "DEBUG"}
    done = subprocess.run([sys.executable, "-m", "segstream_services.cli", "run", "ingest",
                           "--idle-exit", "4"], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert KAFKA_PASSWORD not in done.stdout + done.stderr
    client = redis_client(sasl_broker.redis.model_copy(update={"key_prefix": unique}))
    keys = Keys(unique)
    assert all(client.get(keys.text(f"u{n}")) for n in range(4))
    client.close()
    consumer = clients.consumer(topics.dlq, group_id=None, consumer_timeout_ms=3000)
    dead = [r for r in consumer]
    consumer.close()
    assert len(dead) == 1 and dead[0].value == b"{not json"
