"""Local infrastructure without Docker: a real Apache Kafka broker and a Redis server.

Kafka (KRaft, single node) runs from Maven Central jars: ``deploy/kafka/pom.xml`` is
resolved once into ``$SEGSTREAM_HOME/kafka/<pom hash>/lib`` and reused. Redis is Debian's
``redis-server`` (installed with apt-get when missing). Both run as detached processes
whose data, logs and pid files live in ``LocalInfraSettings.state_dir``.

``up`` is idempotent; ``down`` stops with SIGTERM and, after ``stop_timeout_s``, SIGKILL.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from segstream.config import LocalInfraSettings, Settings
from segstream.errors import ConfigError, InfraError, PortInUse
from segstream.kafka_io import KafkaClients, describe, ensure_topics, topic_specs
from segstream.redis_io import check_redis, redis_client

log = logging.getLogger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parents[3] / "deploy"
KAFKA_DIR = DEPLOY_DIR / "kafka"


@dataclass
class ServiceStatus:
    """What ``segstream status`` reports for one local service."""

    name: str
    pid: int | None
    healthy: bool
    detail: str
    extra: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- processes and ports


def _pid_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs and its command line contains ``marker`` (guards pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # a zombie (state Z) has exited; its parent just has not reaped it yet
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and marker.encode() in cmdline


def _read_pid(path: Path, marker: str) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid, marker) else None


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _require_free(port: int, what: str, setting: str) -> None:
    if _port_open(port):
        raise PortInUse(
            f"port {port} ({what}) is held by another program; stop it or set {setting}"
        )


def _stop(pid_file: Path, marker: str, timeout_s: float) -> bool:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns True if it was running."""
    pid = _read_pid(pid_file, marker)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_alive(pid, marker):
        time.sleep(0.2)
    if _pid_alive(pid, marker):
        log.warning("pid %s ignored SIGTERM for %.0fs; sending SIGKILL", pid, timeout_s)
        os.kill(pid, signal.SIGKILL)
        while _pid_alive(pid, marker):
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


def _spawn(cmd: list[str], log_path: Path, pid_file: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` detached (own session, so it outlives the CLI) with output to a log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- Redis


def ensure_redis_installed() -> str:
    """Path of ``redis-server``, installing Debian's package with apt-get when missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise InfraError("redis-server is missing: install Debian's redis-server package")
    log.info("installing redis-server with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise InfraError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")
    found = shutil.which("redis-server")
    if not found:
        raise InfraError("apt-get installed redis-server but it is not on PATH")
    return found


class LocalRedis:
    """Debian's redis-server on loopback, AOF persistence configurable."""

    marker = "redis-server"

    def __init__(self, local: LocalInfraSettings) -> None:
        self.local = local
        self.dir = local.state_dir / f"redis-{local.redis_port}"
        self.pid_file = self.dir / "redis.pid"
        self.log_path = self.dir / "redis.log"

    def pid(self) -> int | None:
        return _read_pid(self.pid_file, self.marker)

    def _client(self, settings: Settings):
        cfg = settings.redis.model_copy(update={"host": "127.0.0.1", "port": self.local.redis_port})
        return redis_client(cfg)

    def check_ports(self) -> None:
        """Raise ``PortInUse`` if another program holds our port (no-op while we run)."""
        if self.pid() is None:
            _require_free(self.local.redis_port, "Redis", "SEGSTREAM_LOCAL__REDIS_PORT")

    def start(self, settings: Settings) -> bool:
        """Start unless running; True if this call started it."""
        if self.pid() is not None:
            return False
        self.check_ports()
        binary = ensure_redis_installed()
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        conf.write_text(
            "\n".join([
                "bind 127.0.0.1",
                f"port {self.local.redis_port}",
                f"dir {self.dir}",
                "daemonize no",
                f"appendonly {'yes' if self.local.redis_appendonly else 'no'}",
                "appendfsync everysec",
                'save ""',
                "protected-mode yes",
                "",
            ])
        )
        _spawn([binary, str(conf)], self.log_path, self.pid_file)
        deadline = time.monotonic() + self.local.start_timeout_s
        client = self._client(settings)
        while True:
            try:
                client.ping()
                return True
            except Exception as exc:
                if self.pid() is None:
                    raise InfraError(f"redis-server exited: {_tail(self.log_path, 5)}") from exc
                if time.monotonic() > deadline:
                    raise InfraError("redis-server did not answer PING in time") from exc
                time.sleep(0.1)

    def status(self, settings: Settings) -> ServiceStatus:
        pid = self.pid()
        try:
            client = self._client(settings)
            check_redis(client)
            version = client.info("server")["redis_version"]
            return ServiceStatus("redis", pid, True, f"redis-server {version} on "
                                 f"127.0.0.1:{self.local.redis_port}")
        except InfraError as exc:
            return ServiceStatus("redis", pid, False, str(exc))

    def stop(self) -> bool:
        return _stop(self.pid_file, self.marker, self.local.stop_timeout_s)


# ---------------------------------------------------------------- Kafka


def kafka_version() -> str:
    """The Kafka version pinned in ``deploy/kafka/pom.xml``."""
    pom = (KAFKA_DIR / "pom.xml").read_text()
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    if not match:
        raise InfraError("deploy/kafka/pom.xml names no kafka.version")
    return match.group(1)


def ensure_kafka_jars(home: Path) -> Path:
    """Resolve the pinned pom into a jar folder outside the clone (reused when present)."""
    pom = KAFKA_DIR / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    lib = home / "kafka" / f"{kafka_version()}-{digest}" / "lib"
    if (lib / ".complete").exists():
        return lib
    if not shutil.which("mvn") or not shutil.which("java"):
        raise InfraError("Kafka needs Java 17+ and Maven (mvn) on PATH")
    log.info("fetching Kafka %s jars from Maven Central into %s", kafka_version(), lib)
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    done = subprocess.run(
        ["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
         f"-Dkafka.lib.dir={lib}"],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise InfraError(f"mvn dependency:copy-dependencies failed: {done.stdout[-400:]}")
    if not list(lib.glob("kafka_2.13-*.jar")):
        raise InfraError(f"mvn finished but {lib} holds no kafka_2.13 jar")
    (lib / ".complete").touch()
    return lib


def _properties(template: Path, overrides: dict[str, str]) -> str:
    """``template`` with ``key=value`` lines replaced by (or extended with) ``overrides``."""
    out, seen = [], set()
    for line in template.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and "=" in line and key in overrides:
            out.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            out.append(line)
    out += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    return "\n".join(out) + "\n"


class LocalKafka:
    """A single-node KRaft broker+controller on loopback, from Maven jars."""

    marker = "kafka.Kafka"

    def __init__(self, local: LocalInfraSettings) -> None:
        self.local = local
        self.dir = local.state_dir / f"kafka-{local.kafka_port}"
        self.pid_file = self.dir / "kafka.pid"
        self.log_path = self.dir / "logs" / "server.log"

    def pid(self) -> int | None:
        return _read_pid(self.pid_file, self.marker)

    def check_ports(self) -> None:
        """Raise ``PortInUse`` if another program holds our ports (no-op while we run)."""
        if self.pid() is None:
            _require_free(self.local.kafka_port, "Kafka", "SEGSTREAM_LOCAL__KAFKA_PORT")
            _require_free(self.local.kafka_controller_port, "Kafka controller",
                          "SEGSTREAM_LOCAL__KAFKA_CONTROLLER_PORT")
            if self.local.kafka_sasl_port:
                _require_free(self.local.kafka_sasl_port, "Kafka SASL",
                              "SEGSTREAM_LOCAL__KAFKA_SASL_PORT")

    def _java(self, lib: Path, *args: str, heap_mb: int = 256) -> list[str]:
        return ["java", f"-Xmx{heap_mb}m",
                f"-Dlog4j2.configurationFile={KAFKA_DIR / 'tools-log4j2.properties'}",
                "-cp", f"{lib}/*", *args]

    def _configure(self, lib: Path) -> Path:
        """Write server.properties for our ports and format storage once (fixed cluster id)."""
        data = self.dir / "data"
        props = self.dir / "server.properties"
        port, cport = self.local.kafka_port, self.local.kafka_controller_port
        overrides = {
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "log.dirs": str(data),
        }
        overrides.update(_sasl_overrides(self.local, overrides))
        # the SASL users' passwords may be in it: readable by the owner only
        props.touch(mode=0o600)
        props.chmod(0o600)
        props.write_text(_properties(KAFKA_DIR / "server.properties", overrides))
        if not (data / "meta.properties").exists():
            id_file = self.dir / "cluster.id"
            if not id_file.exists():
                id_file.write_text(_kafka_cluster_id())
            scram = [arg for user, secret in sorted(self.local.kafka_sasl_users.items())
                     for mech in SCRAM_MECHANISMS
                     for arg in ("--add-scram", f"{mech}=[name={user},"
                                 f"password={secret.get_secret_value()}]")
                     ] if self.local.kafka_sasl_port else []
            done = subprocess.run(
                self._java(lib, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                           "-t", id_file.read_text().strip(), "-c", str(props), *scram),
                capture_output=True, text=True,
            )
            if done.returncode != 0:
                raise InfraError(f"kafka storage format failed: {done.stderr.strip()[-400:]}")
        return props

    def start(self, settings: Settings) -> bool:
        """Start unless running; True if this call started it. Waits for a metadata reply."""
        if self.pid() is not None:
            return False
        self.check_ports()
        lib = ensure_kafka_jars(self.local.home)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        props = self._configure(lib)
        heap = self.local.kafka_heap_mb
        cmd = [
            "java", f"-Xms{min(256, heap)}m", f"-Xmx{heap}m", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.dir / 'logs'}",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            "-cp", f"{lib}/*", self.marker, str(props),
        ]
        proc = _spawn(cmd, self.log_path, self.pid_file)
        self._wait_ready(settings, proc)
        return True

    def _bootstrap(self) -> str:
        return f"127.0.0.1:{self.local.kafka_port}"

    def _wait_ready(self, settings: Settings, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.local.start_timeout_s
        while True:
            if proc.poll() is not None:
                raise InfraError(f"Kafka exited during start-up:\n{_tail(self.log_path)}")
            # a cheap TCP probe first: kafka-python backs off for seconds on refusals
            if _port_open(self.local.kafka_port) and metadata_ok(settings, self._bootstrap()):
                return
            if time.monotonic() > deadline:
                raise InfraError(f"Kafka did not answer a metadata request in "
                                 f"{self.local.start_timeout_s:.0f}s:\n{_tail(self.log_path)}")
            time.sleep(0.3)

    def status(self, settings: Settings) -> ServiceStatus:
        pid = self.pid()
        if not metadata_ok(settings, self._bootstrap()):
            return ServiceStatus("kafka", pid, False,
                                 f"no metadata reply from {self._bootstrap()}")
        clients = _clients(settings, self._bootstrap())
        admin = clients.admin()
        try:
            topics = describe(admin, [s.name for s in topic_specs(settings.topics)])
        finally:
            admin.close()
        origin = "jars from Maven Central" if pid else "not started by segstream"
        extra = {name: ", ".join(f"{k}={v}" for k, v in info.items())
                 for name, info in topics.items()}
        if self.local.kafka_sasl_port:
            extra["SASL_PLAINTEXT listener"] = (
                f"127.0.0.1:{self.local.kafka_sasl_port} (PLAIN, {', '.join(SCRAM_MECHANISMS)};"
                f" {len(self.local.kafka_sasl_users)} user(s))")
        return ServiceStatus("kafka", pid, True, f"Apache Kafka {kafka_version()} (KRaft, "
                             f"{origin}) on {self._bootstrap()}", extra)

    def stop(self) -> bool:
        return _stop(self.pid_file, self.marker, self.local.stop_timeout_s)


SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
_SASL_USER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SASL_PASSWORD = re.compile(r"^[^\s\"\\;,=\[\]]{1,128}$")


def _sasl_overrides(local: LocalInfraSettings, base: dict[str, str]) -> dict[str, str]:
    """server.properties entries for the opt-in SASL_PLAINTEXT listener ({} when off).

    PLAIN users live in the listener's JAAS line; SCRAM users are added at format time.
    Names and passwords are restricted to characters that need no quoting in either.
    """
    sport = local.kafka_sasl_port
    if not sport:
        return {}
    if not local.kafka_sasl_users:
        raise ConfigError("local.kafka_sasl_port is set but local.kafka_sasl_users is empty")
    for user, secret in local.kafka_sasl_users.items():
        if not _SASL_USER.match(user):
            raise ConfigError(f"local.kafka_sasl_users: user name {user!r} must match "
                              f"{_SASL_USER.pattern}")
        if not _SASL_PASSWORD.match(secret.get_secret_value()):
            raise ConfigError(f"local.kafka_sasl_users: the password of {user!r} must be "
                              "1-128 characters without spaces or any of \" \\ ; , = [ ]")
    plain = " ".join(f'user_{user}="{secret.get_secret_value()}"'
                     for user, secret in sorted(local.kafka_sasl_users.items()))
    mechanisms = ",".join(("PLAIN", *SCRAM_MECHANISMS))
    props = {
        "listeners": f"{base['listeners']},SASL_PLAINTEXT://127.0.0.1:{sport}",
        "advertised.listeners": f"{base['advertised.listeners']},"
                                f"SASL_PLAINTEXT://127.0.0.1:{sport}",
        "listener.security.protocol.map":
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": mechanisms,
        "listener.name.sasl_plaintext.sasl.enabled.mechanisms": mechanisms,
        "listener.name.sasl_plaintext.plain.sasl.jaas.config":
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain};",
    }
    for mech in SCRAM_MECHANISMS:
        props[f"listener.name.sasl_plaintext.{mech.lower()}.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;")
    return props


def _kafka_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _clients(settings: Settings, bootstrap: str) -> KafkaClients:
    """Clients for the local broker's PLAINTEXT listener (whatever the services use)."""
    return KafkaClients(settings.kafka.model_copy(update={
        "bootstrap_servers": bootstrap, "request_timeout_ms": 5_000,
        "security_protocol": "PLAINTEXT", "sasl_mechanism": None, "sasl_username": None,
        "sasl_password": None}))


@contextlib.contextmanager
def _quiet_kafka_client() -> Iterator[None]:
    """Mute kafka-python's connection-refused errors while probing a starting broker."""
    logger = logging.getLogger("kafka")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


def metadata_ok(settings: Settings, bootstrap: str) -> bool:
    """True if the broker at ``bootstrap`` answers a metadata request."""
    with _quiet_kafka_client():
        try:
            admin = _clients(settings, bootstrap).admin()
        except Exception:  # NoBrokersAvailable, connection errors: "not yet"
            return False
        try:
            admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            admin.close()


# ---------------------------------------------------------------- the commands


def up(settings: Settings) -> dict[str, bool]:
    """Start Redis and Kafka unless running, then create the topics. Idempotent.

    Every port is checked before anything starts, so a conflict leaves nothing behind.
    """
    redis_, kafka = LocalRedis(settings.local), LocalKafka(settings.local)
    redis_.check_ports()
    kafka.check_ports()
    started = {"redis": redis_.start(settings), "kafka": kafka.start(settings)}
    admin = _clients(settings, f"127.0.0.1:{settings.local.kafka_port}").admin()
    try:
        ensure_topics(admin, topic_specs(settings.topics))
    finally:
        admin.close()
    return started


def down(settings: Settings) -> dict[str, bool]:
    """Stop Kafka, then Redis. Returns which of them were running."""
    return {
        "kafka": LocalKafka(settings.local).stop(),
        "redis": LocalRedis(settings.local).stop(),
    }


def status(settings: Settings) -> list[ServiceStatus]:
    local = settings.local
    return [LocalKafka(local).status(settings), LocalRedis(local).status(settings)]
