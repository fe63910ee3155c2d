"""Detached local processes for ``segstream up``: pid files, ports, start, stop, logs.

A pid file alone is not trusted: a process counts as ours only while it runs and its
command line holds the service's marker (pids get reused).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from segstream.errors import PortInUse

log = logging.getLogger(__name__)


@dataclass
class ServiceStatus:
    """What ``segstream status`` reports for one local service."""

    name: str
    pid: int | None
    healthy: bool
    detail: str
    extra: dict[str, str] = field(default_factory=dict)


def pid_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs and its command line contains ``marker`` (guards pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # a zombie (state Z) has exited; its parent just has not reaped it yet
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and marker.encode() in cmdline


def read_pid(path: Path, marker: str) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, marker) else None


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def require_free(port: int, what: str, setting: str) -> None:
    if port_open(port):
        raise PortInUse(
            f"port {port} ({what}) is held by another program; stop it or set {setting}"
        )


def stop_process(pid_file: Path, marker: str, timeout_s: float) -> bool:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns True if it was running."""
    pid = read_pid(pid_file, marker)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid, marker):
        time.sleep(0.2)
    if pid_alive(pid, marker):
        log.warning("pid %s ignored SIGTERM for %.0fs; sending SIGKILL", pid, timeout_s)
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid, marker):
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


def spawn(cmd: list[str], log_path: Path, pid_file: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` detached (own session, so it outlives the CLI) with output to a log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
