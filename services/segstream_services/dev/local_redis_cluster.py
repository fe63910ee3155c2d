"""A throwaway local Redis Cluster for tests and trials (not part of ``segstream up``).

``LocalRedisCluster(masters=3).start()`` runs that many Debian ``redis-server`` processes
in cluster mode on free loopback ports (each also needs its bus port, +10000) with their
state in a temporary folder, joins them with ``redis-cli --cluster create`` (no replicas,
the 16,384 slots split evenly), and waits until every node reports ``cluster_state:ok``.
``stop()`` ends exactly those processes and removes the folder. No persistence: it is
for tests only.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import TracebackType

import redis

from segstream.errors import InfraError
from segstream_services.dev.local_redis import ensure_redis_installed

log = logging.getLogger(__name__)
BUS_OFFSET = 10_000  # Redis Cluster's node-to-node bus listens on port + 10000


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, taken: set[int] | None = None) -> list[int]:
    """``count`` loopback ports whose cluster bus port (+10000) is free too."""
    taken = set(taken or ())
    found: list[int] = []
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_OFFSET > 65535 or port in taken or port + BUS_OFFSET in taken:
            continue
        if _bindable(port + BUS_OFFSET):
            found.append(port)
            taken |= {port, port + BUS_OFFSET}
            if len(found) == count:
                return found
    raise InfraError(f"could not find {count} free port pairs for a local Redis Cluster")


class LocalRedisCluster:
    """``masters`` redis-server processes in cluster mode on loopback (see the module doc)."""

    def __init__(self, masters: int = 3, start_timeout_s: float = 30.0) -> None:
        if masters < 3:
            raise InfraError("a Redis Cluster needs at least 3 masters")
        self.masters = masters
        self.start_timeout_s = start_timeout_s
        self.ports: list[int] = []
        self.dir: Path | None = None
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """A node to bootstrap from (clients discover the others)."""
        if not self.ports:
            raise InfraError("the local Redis Cluster is not running")
        return self.ports[0]

    def start(self) -> LocalRedisCluster:
        """Start the nodes, create the cluster and wait until it serves every slot."""
        binary = ensure_redis_installed()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise InfraError("redis-cli is missing: install Debian's redis-tools package")
        self.dir = Path(tempfile.mkdtemp(prefix="segstream-redis-cluster-"))
        self.ports = free_ports(self.masters)
        try:
            for port in self.ports:
                self.procs.append(self._spawn(binary, port))
            for port in self.ports:
                self._wait(partial(self._ping, port), f"node {port} to answer PING")
            done = subprocess.run(
                [cli, "--cluster", "create", *(f"{self.host}:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=self.start_timeout_s)
            if done.returncode != 0:
                raise InfraError(f"redis-cli --cluster create failed: "
                                 f"{(done.stderr or done.stdout).strip()[-300:]}")
            for port in self.ports:
                self._wait(partial(self._cluster_ok, port), f"node {port}: cluster_state ok")
        except BaseException:
            self.stop()
            raise
        log.info("local Redis Cluster on ports %s", self.ports)
        return self

    def _spawn(self, binary: str, port: int) -> subprocess.Popen[bytes]:
        assert self.dir is not None
        node_dir = self.dir / str(port)
        node_dir.mkdir()
        args = [binary, "--port", str(port), "--bind", self.host, "--protected-mode", "no",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000", "--dir", str(node_dir),
                "--appendonly", "no", "--save", "", "--daemonize", "no",
                "--logfile", str(node_dir / "redis.log")]
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _ping(self, port: int) -> bool:
        try:
            return bool(redis.Redis(host=self.host, port=port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def _cluster_ok(self, port: int) -> bool:
        try:
            info = redis.Redis(host=self.host, port=port, socket_timeout=1).cluster("info")
        except redis.RedisError:
            return False
        return str(info.get("cluster_state")) == "ok" and \
            int(info.get("cluster_known_nodes", 0)) == self.masters

    def _wait(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not check():
            dead = [str(port) for port, p in zip(self.ports, self.procs, strict=False)
                    if p.poll() is not None]
            if dead:
                raise InfraError(f"redis-server on port(s) {', '.join(dead)} exited")
            if time.monotonic() > deadline:
                raise InfraError(f"timed out after {self.start_timeout_s:.0f}s waiting for "
                                 f"{what}")
            time.sleep(0.1)

    def stop(self) -> None:
        """End the nodes this object started and remove their folder."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
        self.ports = []
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
