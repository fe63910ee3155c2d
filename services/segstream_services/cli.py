"""The ``segstream`` command line: one entry point, a subcommand per job.

Errors that segstream raises on purpose (``SegstreamError``) and bad arguments print one
line on stderr and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from segstream import __version__
from segstream.config import Settings, load_settings
from segstream.errors import SegstreamError
from segstream.logs import configure_logging

# Each service package may ship a ``cli`` module with ``register(sub, run_sub)``, which adds
# its own subcommands to ``sub`` and its ``segstream run <name>`` entry to ``run_sub``.
SERVICE_PACKAGES = ("ingest", "encoder", "segmenter", "offline", "trainer", "api")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _print_status(settings: Settings, as_json: bool) -> bool:
    from segstream_services.dev import localinfra

    rows = localinfra.status(settings)
    if as_json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="segstream local infrastructure")
        for col in ("service", "pid", "healthy", "detail"):
            table.add_column(col)
        for row in rows:
            table.add_row(row.name, str(row.pid or "-"),
                          "[green]yes[/]" if row.healthy else "[red]no[/]", row.detail)
            for key, value in row.extra.items():
                table.add_row("", "", "", f"  {key}: {value}")
        Console().print(table)
    return all(row.healthy for row in rows)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from segstream_services.dev import localinfra

    started = localinfra.up(settings)
    for name, did in started.items():
        print(f"{name}: {'started' if did else 'already running'}")
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from segstream_services.dev import localinfra

    stopped = localinfra.down(settings)
    for name, was_running in stopped.items():
        print(f"{name}: {'stopped' if was_running else 'was not running'}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    return 0 if _print_status(settings, args.json) else 1


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from segstream_services.dev.demo import run_demo

    return run_demo(settings, args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="segstream",
        description="Real-time, language-model-based user interest segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"segstream {__version__}")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML settings file (default: $SEGSTREAM_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    def add(name: str, func: Callable[[Settings, argparse.Namespace], int], help_: str
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    add("up", cmd_up, "Start the local Kafka broker and Redis (idempotent) and create topics.")
    add("down", cmd_down, "Stop the local Kafka broker and Redis (SIGTERM, then SIGKILL).")
    p = add("status", cmd_status, "Show whether the local Kafka and Redis are healthy.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("demo", cmd_demo, "Bring up Kafka + Redis and the services, stream synthetic "
            "personas (or --file), show segments forming live, summarise, shut down.")
    p.add_argument("--users", type=int, default=400, help="synthetic users (400)")
    p.add_argument("--days", type=int, default=30, help="days of synthetic history (30)")
    p.add_argument("--seed", type=int, default=7, help="generator seed (7)")
    p.add_argument("--malformed", type=float, default=0.01, metavar="SHARE",
                   help="share of malformed records, dead-lettered by ingest (0.01)")
    p.add_argument("--rate", type=float, default=3_000, metavar="N",
                   help="events per second offered (3000; 0 = as fast as possible)")
    p.add_argument("--k", type=int, default=8, help="fine segments (8)")
    p.add_argument("--settle", type=float, default=15.0, metavar="S",
                   help="end after everything is consumed and S seconds without changes")
    p.add_argument("--max-seconds", type=float, default=900.0, metavar="S",
                   help="end after S seconds whatever happens (900)")
    p.add_argument("--keep-infra", action="store_true",
                   help="leave Kafka and Redis running at the end")
    from segstream_services.source_args import add_source_args

    add_source_args(p, positional=False)
    from segstream_services import forget

    forget.register(sub)
    run = add("run", _missing_service, "Run one service in the foreground.")
    run_sub = run.add_subparsers(dest="service", required=True, metavar="SERVICE",
                                 parser_class=_Parser)
    for name in SERVICE_PACKAGES:
        module = f"segstream_services.{name}.cli"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(sub, run_sub)
    return parser


def _missing_service(settings: Settings, args: argparse.Namespace) -> int:
    raise SegstreamError(f"unknown service {args.service!r}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log_level, settings.log_json)
        return args.func(settings, args)
    except SegstreamError as exc:
        print(f"segstream: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
