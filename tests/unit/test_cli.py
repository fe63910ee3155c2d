"""The CLI's promise: bad input gives one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "segstream_services.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    "args",
    [
        ("no-such-command",),
        ("status", "--no-such-flag"),
        ("--config", "/nonexistent/segstream.toml", "status"),
        ("run", "ingest", "--metrics-port", "99999"),
        ("run", "encoder", "--idle-exit", "-1"),
        ("run", "segmenter", "--idle-exit", "soon"),
        ("replay", "/nonexistent/events.csv"),
        ("produce", "--synthetic", "--users", "0"),
    ],
)
def test_bad_input_is_one_line(args: tuple[str, ...]) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_bad_setting_in_environment_is_one_line() -> None:
    import os

    done = run("status", env={**os.environ, "SEGSTREAM_REDIS__PORT": "99999"})
    assert done.returncode == 2
    assert done.stderr.strip().startswith("segstream: invalid setting redis.port")
    assert len(done.stderr.strip().splitlines()) == 1


def test_help_explains_each_command_and_never_shows_secrets() -> None:
    import os

    env = {**os.environ, "SEGSTREAM_REDIS__PASSWORD": "hunter2-in-help"}
    top = run("--help", env=env)
    assert top.returncode == 0
    for command in ("up", "down", "status", "demo", "run"):
        assert command in top.stdout
        sub = run(command, "--help", env=env)
        assert sub.returncode == 0 and "usage: segstream" in sub.stdout
        assert "hunter2" not in sub.stdout + sub.stderr


@pytest.mark.parametrize("service", ["ingest", "encoder", "segmenter"])
def test_every_service_takes_the_same_run_flags(service: str) -> None:
    done = run("run", service, "--help")
    assert done.returncode == 0, done.stderr
    for flag in ("--idle-exit", "--metrics-port"):
        assert flag in done.stdout, f"run {service} lacks {flag}"
    assert ("--model" in done.stdout) == (service == "encoder")
