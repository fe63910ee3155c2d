"""The local broker's SCRAM users are written at storage format time without their
passwords ever appearing on a process command line (``ps`` shows every argv)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from segstream.config import Settings, load_settings
from segstream_services.dev import local_kafka

pytestmark = pytest.mark.integration
PASSWORD = "pw-Secret-0815"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_scram_passwords_never_reach_a_command_line(infra: Settings, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    lib = local_kafka.ensure_kafka_jars(infra.local.home)  # the jars already fetched
    settings = load_settings(local={
        **infra.local.model_dump(), "home": tmp_path, "kafka_port": _free_port(),
        "kafka_controller_port": _free_port(), "kafka_sasl_port": _free_port(),
        "kafka_sasl_users": {"alice": PASSWORD}})
    commands: list[list[str]] = []
    real_run = subprocess.run

    def spy(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        commands.append([str(c) for c in cmd])
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(local_kafka.subprocess, "run", spy)
    broker = local_kafka.LocalKafka(settings.local)
    broker.dir.mkdir(parents=True, exist_ok=True)
    broker._configure(lib)

    assert commands, "storage format ran no command"
    assert not any(PASSWORD in arg for cmd in commands for arg in cmd)
    assert (broker.dir / "data" / "meta.properties").exists()
    assert list(broker.dir.glob("*.args")) == []  # the argument file is gone
    # the SCRAM credentials were written: the bootstrap metadata names the user
    written = b"".join(p.read_bytes() for p in (broker.dir / "data").rglob("*")
                       if p.is_file())
    assert b"alice" in written
