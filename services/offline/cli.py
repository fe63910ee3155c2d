"""`segstream eval` and `segstream fit`: the offline path, one process, no Kafka or Redis."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segstream.config import IngestSettings, Settings
from segstream.errors import ConfigError, InvalidEvent
from segstream.events import Event, event_from_dict
from segstream.sources import Mapping, ReadReport, load_items, parse_pairs, read_events


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Arguments that say how to read a foreign event file (shared by fit and eval)."""
    p.add_argument("file", metavar="FILE", help="events as CSV, TSV or JSONL")
    p.add_argument("--map", metavar="FIELD=COLUMN,...",
                   help="event field <- file column, e.g. user_id=CustomerID,ts=InvoiceDate")
    p.add_argument("--set", metavar="FIELD=VALUE,...",
                   help="constant values for fields the file lacks, e.g. type=purchase")
    p.add_argument("--items", metavar="FILE", help="item table joined on item_id (titles, "
                   "categories, prices), e.g. MovieLens movies.csv")
    p.add_argument("--item-map", metavar="FIELD=COLUMN,...",
                   help="item field <- item-table column, e.g. item_id=movieId,category=genres")
    p.add_argument("--ts-unit", default="auto", choices=("auto", "s", "ms", "us"),
                   help="unit of numeric timestamps (auto: guessed from magnitude)")
    p.add_argument("--ts-format", metavar="STRPTIME", help="format of textual timestamps")
    p.add_argument("--timezone", default="UTC", help="zone of timestamps written without one")
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
    mapping = Mapping(columns=parse_pairs(args.map), constants=parse_pairs(args.set, "--set"),
                      ts_unit=args.ts_unit, ts_format=args.ts_format, timezone=args.timezone)
    items = None
    if args.items:
        items = load_items(args.items, Mapping(columns=parse_pairs(args.item_map,
                                                                   "--item-map")))
    report = ReadReport()
    events = []
    allowed = settings.events.allowed_types
    for row in read_events(args.file, mapping, items, report):
        try:
            events.append(event_from_dict(row, allowed))
        except InvalidEvent as exc:
            key = f"invalid: {exc.reason}"
            report.skipped[key] = report.skipped.get(key, 0) + 1
    if not events:
        raise ConfigError(f"{args.file}: no valid events (skipped: {report.skipped})")
    return events, report


def parse_time(text: str) -> int:
    """Epoch ms from an ISO date/time (UTC when no zone is given)."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--split-time: not an ISO date or time: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def register(sub: Any, run_sub: Any) -> None:
    p = sub.add_parser("eval", help="Compare segstream's segments with baselines on a file.",
                       description="Temporal-split evaluation: segment popularity from "
                       "segstream's text-embedding segments vs global popularity, RFM + "
                       "KMeans and category histogram + KMeans (HR@10, NDCG@10, coverage, "
                       "silhouette, Davies-Bouldin, stability).")
    add_source_args(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--split-time", metavar="T[,T...]",
                      help="split time(s), ISO dates (UTC unless a zone is given)")
    when.add_argument("--rolling", type=int, metavar="N",
                      help="N split times spread over the data (rolling origin)")
    p.add_argument("--horizon-days", type=float, default=180.0,
                   help="length of the truth period after each split (default 180)")
    p.add_argument("--stability-days", type=float,
                   help="stability compares with the segments this long before T "
                   "(default: the horizon)")
    p.add_argument("--k", type=int, default=8, help="segments for every method (default 8)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.add_argument("--min-rating", type=float, default=4.0,
                   help="ratings below this are not positive interactions (default 4.0)")
    p.add_argument("--model", metavar="DIR", help="encoder model directory "
                   "(default: settings.encoder, i.e. all-MiniLM-L6-v2)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.set_defaults(func=cmd_eval)


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from segstream.encoding import Encoder
    from segstream.offline import TextEmbedder
    from segstream.services.offline.evaluate import (
        METHODS,
        EvalConfig,
        rolling_splits,
        run_eval,
    )

    if args.k < 2 or args.seeds < 1:
        raise ConfigError("--k must be at least 2 and --seeds at least 1")
    console = Console(stderr=True)
    with console.status("reading events"):
        events, report = load_events(args, settings)
    console.print(f"{len(events):,} events from {report.rows:,} rows "
                  f"({sum(report.skipped.values()):,} skipped: {report.skipped or 'none'})")
    splits = (rolling_splits(events, args.rolling, args.horizon_days) if args.rolling
              else [parse_time(t) for t in args.split_time.split(",") if t.strip()])
    config = EvalConfig(split_ms=splits, horizon_days=args.horizon_days,
                        stability_days=args.stability_days, k=args.k,
                        seeds=tuple(range(args.seeds)), min_rating=args.min_rating)
    encoder_settings = settings.encoder
    if args.model:
        encoder_settings = encoder_settings.model_copy(update={"model_path": args.model})
    with console.status("loading the encoder"):
        embed = TextEmbedder(Encoder.from_settings(encoder_settings))
    with console.status("evaluating") as status:
        result = run_eval(events, ingest_settings(args, settings), embed, config,
                          progress=lambda msg: status.update(f"evaluating: {msg}"))
    if not result.splits_used:
        raise ConfigError("no split had users with history before it and liked items after "
                          "it; choose other --split-time values or a longer --horizon-days")

    table = Table(title=f"segstream eval: {len(result.splits_used)} split(s), "
                  f"{result.users_evaluated} user-split pairs, k={args.k}, "
                  f"{args.seeds} seed(s), mean ± std over seeds")
    for col in ("method", "HR@10", "NDCG@10", "coverage", "silhouette", "Davies-Bouldin",
                "stability (ARI)"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name in METHODS:
        summary = result.methods[name].summary()
        table.add_row(name, *(_pm(*summary[m]) for m in
                              ("hr", "ndcg", "coverage", "silhouette", "davies_bouldin",
                               "stability")))
    Console(width=max(Console().width, 132)).print(table)
    console.print(f"encoder: {embed.encoder.model_version} on {embed.encoder.device}; "
                  f"{len(embed.cache):,} distinct feature texts encoded")
    if args.json:
        payload = result.to_json() | {"model_version": embed.encoder.model_version}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=float))
    return 0


def _pm(mean: float, std: float) -> str:
    if mean != mean:  # NaN: not applicable
        return "-"
    return f"{mean:.4f} ± {std:.4f}"
