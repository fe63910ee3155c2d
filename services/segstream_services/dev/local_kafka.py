"""The local Kafka of ``segstream up``: a single-node KRaft broker from Maven Central jars.

``deploy/kafka/pom.xml`` is resolved once into ``$SEGSTREAM_HOME/kafka/<version>-<pom
hash>/lib`` and reused; an opt-in SASL_PLAINTEXT listener (PLAIN and SCRAM users) serves
the security tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from segstream import kafka_client
from segstream.config import LocalInfraSettings, Settings
from segstream.errors import ConfigError, InfraError
from segstream.kafka_io import describe, topic_specs
from segstream_services.dev.processes import (
    ServiceStatus,
    port_open,
    read_pid,
    require_free,
    spawn,
    stop_process,
    tail,
)

log = logging.getLogger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parents[3] / "deploy"
KAFKA_DIR = DEPLOY_DIR / "kafka"


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
        return read_pid(self.pid_file, self.marker)

    def check_ports(self) -> None:
        """Raise ``PortInUse`` if another program holds our ports (no-op while we run)."""
        if self.pid() is None:
            require_free(self.local.kafka_port, "Kafka", "SEGSTREAM_LOCAL__KAFKA_PORT")
            require_free(self.local.kafka_controller_port, "Kafka controller",
                          "SEGSTREAM_LOCAL__KAFKA_CONTROLLER_PORT")
            if self.local.kafka_sasl_port:
                require_free(self.local.kafka_sasl_port, "Kafka SASL",
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
            # the tool and its arguments go in a java @argfile (owner-only, deleted after):
            # SCRAM passwords must never appear on a process command line
            argfile = self.dir / "format.args"
            argfile.touch(mode=0o600)
            argfile.chmod(0o600)
            argfile.write_text("".join(
                '"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"\n'
                for a in ["kafka.tools.StorageTool", "format", "--ignore-formatted",
                          "-t", id_file.read_text().strip(), "-c", str(props), *scram]))
            try:
                done = subprocess.run(self._java(lib, f"@{argfile}"), capture_output=True,
                                      text=True)
            finally:
                argfile.unlink(missing_ok=True)
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
        proc = spawn(cmd, self.log_path, self.pid_file)
        self._wait_ready(settings, proc)
        return True

    def _bootstrap(self) -> str:
        return f"127.0.0.1:{self.local.kafka_port}"

    def _wait_ready(self, settings: Settings, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.local.start_timeout_s
        while True:
            if proc.poll() is not None:
                raise InfraError(f"Kafka exited during start-up:\n{tail(self.log_path)}")
            # a cheap TCP probe first: kafka-python backs off for seconds on refusals
            if port_open(self.local.kafka_port) and metadata_ok(settings, self._bootstrap()):
                return
            if time.monotonic() > deadline:
                raise InfraError(f"Kafka did not answer a metadata request in "
                                 f"{self.local.start_timeout_s:.0f}s:\n{tail(self.log_path)}")
            time.sleep(0.3)

    def status(self, settings: Settings) -> ServiceStatus:
        pid = self.pid()
        if not metadata_ok(settings, self._bootstrap()):
            return ServiceStatus("kafka", pid, False,
                                 f"no metadata reply from {self._bootstrap()}")
        clients = kafka_clients(settings, self._bootstrap())
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
        return stop_process(self.pid_file, self.marker, self.local.stop_timeout_s)


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


def kafka_clients(settings: Settings, bootstrap: str) -> kafka_client.KafkaClients:
    """Clients for the local broker's PLAINTEXT listener (whatever the services use), of
    the default backend (its connect errors while the broker starts are quick)."""
    return kafka_client.kafka_clients(settings.kafka.model_copy(update={
        "client": "kafka-python", "bootstrap_servers": bootstrap, "request_timeout_ms": 5_000,
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
            admin = kafka_clients(settings, bootstrap).admin()
        except Exception:  # NoBrokersAvailable, connection errors: "not yet"
            return False
        try:
            admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            admin.close()
