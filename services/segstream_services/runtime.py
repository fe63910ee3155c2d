"""The one skeleton behind ``segstream run ingest|encoder|segmenter``.

Each service keeps its own loop in its ``service.py``; the skeleton does everything around
it, the same way for all three:

- SIGTERM and SIGINT call ``service.stop()``: the loop finishes the batch in hand,
  commits and returns (a second signal is not needed and not special);
- ``/metrics`` and ``/healthz`` are served on the metrics port (0: off), with real Kafka
  and/or Redis round trips behind ``/healthz`` (``segstream.health``);
- one log line when the service is ready and one with its summary when it stops; logging
  itself is configured once, by the CLI entry point, from ``log_level``/``log_json``;
- ``close()`` runs whatever happened in the loop.

The same flags where they apply: ``--idle-exit S`` and ``--metrics-port N`` on all three,
``--model DIR`` (with ``--device``/``--dtype``) on the encoder.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any, Protocol

from segstream.config import Settings
from segstream.errors import ConfigError
from segstream.metrics import Health, ServiceMetrics

log = logging.getLogger("segstream.runtime")


class Service(Protocol):
    """What the skeleton needs from a service (its loop stays in the service)."""

    def run(self, idle_exit_s: float | None = None) -> Any:
        """Loop until ``stop()`` (or ``idle_exit_s`` seconds without work); return a result."""

    def stop(self) -> None:
        """Ask ``run`` to finish the batch in hand and return; safe from a signal handler."""

    def close(self) -> None:
        """Release clients once ``run`` has returned (or failed)."""


def add_service_args(parser: argparse.ArgumentParser, service: str) -> None:
    """The flags every ``segstream run SERVICE`` takes (``service``: its settings section)."""
    section = Settings.model_fields[service].annotation
    default = section.model_fields["metrics_port"].default if section else None
    parser.add_argument("--idle-exit", type=float, metavar="S",
                        help="exit after S seconds without work (batch jobs, tests)")
    parser.add_argument("--metrics-port", type=int, metavar="N",
                        help=f"serve /metrics and /healthz on port N (0: off; default: "
                             f"{service}.metrics_port, {default})")


def service_options(args: argparse.Namespace, configured_port: int
                    ) -> tuple[int, float | None]:
    """The metrics port (``--metrics-port`` or the configured one) and ``--idle-exit``,
    checked before a service loads anything."""
    port = getattr(args, "metrics_port", None)
    port = configured_port if port is None else port
    if not 0 <= port <= 65535:
        raise ConfigError(f"--metrics-port {port}: not a port number (0-65535)")
    idle_exit_s = getattr(args, "idle_exit", None)
    if idle_exit_s is not None and not idle_exit_s >= 0:
        raise ConfigError(f"--idle-exit {idle_exit_s:g}: must be >= 0 seconds")
    return int(port), idle_exit_s


def run_service(name: str, service: Service, *, metrics: ServiceMetrics, port: int,
                health: Health, idle_exit_s: float | None = None,
                summary: Callable[[Any], str] | None = None) -> Any:
    """Run ``service`` in the foreground with signals, metrics and health wired up.

    Returns what ``service.run`` returned. Signal handlers are installed only in the main
    thread (Python allows no other) and restored afterwards.
    """
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, _frame: object) -> None:
            log.info("%s: %s finishes the batch in hand, commits and exits", name,
                     signal.Signals(signum).name)
            service.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    server = None
    try:
        if port:
            server = metrics.serve(port, health=health)
        log.info("%s running (metrics and health: %s%s)", name,
                 f"port {port}, /metrics and /healthz" if port else "off",
                 f"; exits after {idle_exit_s:g}s idle" if idle_exit_s is not None else "")
        result = service.run(idle_exit_s=idle_exit_s)
    finally:
        service.close()
        if server is not None:
            server.shutdown()
            server.server_close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    log.info("%s stopped: %s", name, summary(result) if summary else "done")
    return result
