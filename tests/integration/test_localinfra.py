"""`segstream up / status / down` on ports of its own: real processes, nothing left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from segstream.config import Settings

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "segstream_services.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def segstream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=240)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_env(kafka: int, controller: int, redis: int) -> dict[str, str]:
    return {
        **os.environ,
        "SEGSTREAM_LOCAL__KAFKA_PORT": str(kafka),
        "SEGSTREAM_LOCAL__KAFKA_CONTROLLER_PORT": str(controller),
        "SEGSTREAM_LOCAL__REDIS_PORT": str(redis),
        "SEGSTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "SEGSTREAM_REDIS__PORT": str(redis),
    }


def test_up_is_idempotent_status_is_real_and_down_leaves_nothing(infra: Settings) -> None:
    env = port_env(free_port(), free_port(), free_port())
    try:
        first = segstream(env, "up")
        assert first.returncode == 0, first.stderr
        assert "kafka: started" in first.stdout and "redis: started" in first.stdout
        again = segstream(env, "up")
        assert again.returncode == 0, again.stderr
        assert "kafka: already running" in again.stdout
        assert "redis: already running" in again.stdout

        status = segstream(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        rows = {row["name"]: row for row in json.loads(status.stdout)}
        assert rows["kafka"]["healthy"] and rows["redis"]["healthy"]
        kafka_cmd = Path(f"/proc/{rows['kafka']['pid']}/cmdline").read_bytes().split(b"\0")
        assert b"kafka.Kafka" in kafka_cmd  # the real Apache Kafka main class
        classpath = kafka_cmd[kafka_cmd.index(b"-cp") + 1].decode()
        jars = {p.name for p in Path(classpath.rstrip("*")).glob("*.jar")}
        assert any(j.startswith("kafka_2.13-") for j in jars)  # jars from Maven Central
        assert "log4j-slf4j-impl" in " ".join(jars)
        extra = rows["kafka"]["extra"]
        assert extra["segstream.events"] == ("partitions=6, replication=1, "
                                             "cleanup.policy=delete, min.insync.replicas=1")
        assert extra["segstream.catalog"] == ("partitions=1, replication=1, "
                                              "cleanup.policy=compact, min.insync.replicas=1")
        assert extra["segstream.events.dlq"].startswith("partitions=1")
        pids = [rows["kafka"]["pid"], rows["redis"]["pid"]]
    finally:
        down = segstream(env, "down")
    assert down.returncode == 0, down.stderr
    assert "kafka: stopped" in down.stdout and "redis: stopped" in down.stdout
    assert not any(alive(pid) for pid in pids)


def test_port_held_by_another_program_is_one_line_and_starts_nothing(infra: Settings) -> None:
    redis_port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        held = squatter.getsockname()[1]
        done = segstream(port_env(held, free_port(), redis_port), "up")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"segstream: port {held} (Kafka) is held by another program; "
        "stop it or set SEGSTREAM_LOCAL__KAFKA_PORT"
    ]
    with socket.socket() as probe:  # Redis was not started on its free port either
        assert probe.connect_ex(("127.0.0.1", redis_port)) != 0
