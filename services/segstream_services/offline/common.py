"""What the offline commands (`eval`, `fit`, `finetune`) share: the event file, the feature
windows, times and lists on the command line, the encoder."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segstream.config import IngestSettings, Settings
from segstream.errors import ConfigError, DataError, InvalidEvent
from segstream.events import Event, event_from_dict
from segstream.sources import ReadReport
from segstream_services.source_args import read_mapped


def add_window_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--windows", metavar="SHORT,LONG",
                   help="feature windows in days (default: settings.ingest.windows_days, "
                   "7,30); history files spanning years read better with e.g. 30,365")


def ingest_settings(args: argparse.Namespace, settings: Settings) -> IngestSettings:
    """``settings.ingest`` with the ``--windows`` override applied."""
    if not args.windows:
        return settings.ingest
    try:
        short, long = (int(x) for x in args.windows.split(","))
    except ValueError:
        raise ConfigError(f"--windows: expected SHORT,LONG in days, got {args.windows!r}"
                          ) from None
    if not 0 < short < long:
        raise ConfigError("--windows: need 0 < SHORT < LONG")
    return settings.ingest.model_copy(update={"windows_days": (short, long)})


def load_events(args: argparse.Namespace, settings: Settings) -> tuple[list[Event], ReadReport]:
    """Read, map, join and validate the file's events; invalid rows are counted, not fatal."""
    rows, report = read_mapped(args)
    events = []
    allowed = settings.events.allowed_types
    for row in rows:
        try:
            events.append(event_from_dict(row, allowed))
        except InvalidEvent as exc:
            key = f"invalid: {exc.reason}"
            report.skipped[key] = report.skipped.get(key, 0) + 1
    if not events:
        raise DataError(f"{args.file}: no valid events (skipped: {report.skipped})")
    return events, report


def parse_time(text: str, option: str = "--split-time") -> int:
    """Epoch ms from an ISO date/time (UTC when no zone is given); a bad one is a one-line
    error naming ``option``."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{option}: not an ISO date or time: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def parse_list(text: str, what: str, kind: type = int) -> tuple:
    """``"8,32"`` → ``(8, 32)``; a one-line error when malformed."""
    try:
        values = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what}: expected at least one value")
    return values


def load_encoder(settings: Settings, args: argparse.Namespace) -> Any:
    from segstream.encoding import Encoder

    encoder_settings = settings.encoder
    if args.model:
        if not Path(args.model).is_dir():
            raise ConfigError(f"--model: no such directory: {args.model}")
        encoder_settings = encoder_settings.model_copy(update={"model_path": args.model})
    return Encoder.from_settings(encoder_settings)
