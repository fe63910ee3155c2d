"""The local Redis of ``segstream up``: Debian's redis-server on loopback."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time

import redis

from segstream.config import LocalInfraSettings, Settings
from segstream.errors import InfraError
from segstream.redis_io import check_redis, redis_client
from segstream_services.dev.processes import (
    ServiceStatus,
    read_pid,
    require_free,
    spawn,
    stop_process,
    tail,
)

log = logging.getLogger(__name__)


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
        return read_pid(self.pid_file, self.marker)

    def _client(self, settings: Settings) -> redis.Redis:
        cfg = settings.redis.model_copy(update={"host": "127.0.0.1", "port": self.local.redis_port})
        return redis_client(cfg)

    def check_ports(self) -> None:
        """Raise ``PortInUse`` if another program holds our port (no-op while we run)."""
        if self.pid() is None:
            require_free(self.local.redis_port, "Redis", "SEGSTREAM_LOCAL__REDIS_PORT")

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
        spawn([binary, str(conf)], self.log_path, self.pid_file)
        deadline = time.monotonic() + self.local.start_timeout_s
        client = self._client(settings)
        while True:
            try:
                client.ping()
                return True
            except Exception as exc:
                if self.pid() is None:
                    raise InfraError(f"redis-server exited: {tail(self.log_path, 5)}") from exc
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
        return stop_process(self.pid_file, self.marker, self.local.stop_timeout_s)
