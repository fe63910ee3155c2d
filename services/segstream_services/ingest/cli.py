"""``segstream run ingest``, ``produce --synthetic``, ``replay FILE`` and ``user ID``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segstream.config import Settings
from segstream.errors import ConfigError, InfraError

log = logging.getLogger("segstream.ingest")


def cmd_run_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from segstream.health import service_health
    from segstream_services.ingest.service import IngestService, RunStats
    from segstream_services.runtime import run_service, service_options

    port, idle_exit_s = service_options(args, settings.ingest.metrics_port)
    service = IngestService(settings)

    def summary(stats: RunStats) -> str:
        outcomes = ", ".join(f"{k}={v}" for k, v in sorted(stats.outcomes.items()))
        return f"{stats.records} records, {stats.batches} batches ({outcomes or '-'})"

    run_service("ingest", service, metrics=service.metrics.base,
                port=port, health=service_health(settings, client=service.redis,
                                                 metrics=service.metrics.base,
                                                 dlq=service.dlq_check),
                idle_exit_s=idle_exit_s, summary=summary)
    return 0


class _Pacer:
    """Sleeps so that ``tick`` is called at most ``rate`` times a second (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def tick(self) -> None:
        self.sent += 1
        if self.rate and self.sent % 50 == 0:
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(ahead)


def _produce(settings: Settings, topic: str, records: Iterable[tuple[bytes, bytes | None]],
             total: int | None, rate: float, label: str) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from segstream.kafka_client import KafkaClientError, kafka_clients

    try:
        producer = kafka_clients(settings.kafka).producer(linger_ms=20, batch_size=256 * 1024)
    except KafkaClientError as exc:
        raise InfraError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: "
                         f"{exc}") from None
    pacer = _Pacer(rate)
    sent = 0
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if total:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(label, total=total)
        for key, value in records:
            producer.send(topic, key=key, value=value)
            sent += 1
            pacer.tick()
            if sent % 500 == 0:
                progress.update(task, completed=sent)
        producer.flush()
        progress.update(task, completed=sent)
    producer.close()
    return sent


def _parse_end(text: str) -> int:
    if text == "now":
        return int(time.time() * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--end: not an ISO-8601 time: {text!r}") from None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from segstream.synthetic import SyntheticStream

    if not args.synthetic:
        raise ConfigError("nothing to produce: pass --synthetic (files: segstream replay FILE)")
    for name in ("malformed", "duplicates", "bots"):
        if not 0 <= getattr(args, name) <= 1:
            raise ConfigError(f"--{name} is a share between 0 and 1")
    if args.users < 1 or args.days < 1:
        raise ConfigError("--users and --days must be at least 1")
    stream = SyntheticStream(users=args.users, days=args.days, seed=args.seed,
                             end_ms=_parse_end(args.end), malformed=args.malformed,
                             duplicates=args.duplicates, bots=args.bots,
                             timezone=settings.ingest.timezone)
    truth = Path(args.truth or f"synthetic-seed{args.seed}-users{args.users}.truth.json")
    try:
        stream.write_truth(truth)
    except OSError as exc:
        raise ConfigError(f"cannot write {truth}: {exc.strerror}") from None
    records: Iterator[tuple[bytes, bytes | None]] = stream.records()
    if args.limit:
        records = (r for i, r in zip(range(args.limit), records, strict=False))
    topic = args.topic or settings.topics.events
    sent = _produce(settings, topic, records, args.limit or None, args.rate, "synthetic")
    counts = ", ".join(f"{k} {v}" for k, v in stream.counts.items())
    print(f"produced {sent} records to {topic} ({counts}); personas in {truth}")
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from segstream_services.source_args import read_mapped

    events, report = read_mapped(args, progress=True)
    if args.limit:
        events = events[: args.limit]
    topic = args.topic or settings.topics.events
    records = ((str(e["user_id"]).encode(), json.dumps(e).encode()) for e in events)
    sent = _produce(settings, topic, records, len(events), args.rate, Path(args.file).name)
    skipped = ", ".join(f"{why}: {n}" for why, n in report.skipped.items()) or "none"
    print(f"replayed {sent} of {report.rows} rows to {topic} in event-time order "
          f"(skipped: {skipped})")
    return 0


def user_report(settings: Settings, user_id: str) -> dict[str, Any]:
    """Everything segstream knows about one user, as a JSON-ready dict of sections.

    Sections are dicts of display fields; other services add their own (e.g. a
    ``segment`` section) and both renderers show them without changes here.
    """
    from segstream.feature_store import FeatureStore
    from segstream.feature_text import render
    from segstream.features import summarize
    from segstream.redis_io import check_redis, redis_client

    client = redis_client(settings.redis)
    check_redis(client)
    store = FeatureStore(client, settings)
    state, text = store.read_user(user_id)
    if state.last_ts is None and text is None:
        return {"user_id": user_id, "found": False}
    features = summarize(state, settings.ingest)
    windows = {}
    for w in features.windows:
        windows[f"last_{w.days}_days"] = {
            "events": w.events, "active_days": w.active_days, "types": dict(w.types),
            "categories": dict(w.categories), "purchases": w.purchases,
            "spend": round(w.spend, 2), "quantity": w.quantity,
            "time_of_day": dict(w.time_of_day), "weekday": w.weekday, "weekend": w.weekend}
    dirty_score = client.zscore(store.keys.dirty(), user_id)
    from segstream_services.segmenter.cli import user_segment_info

    segment = user_segment_info(settings, client, user_id)
    from segstream.client import SegmentClient

    vector = SegmentClient(settings, redis_conn=client).vector_status(user_id)
    from segstream_services.encoder.views import view_report
    return {
        "user_id": user_id,
        "found": True,
        "profile": {
            "feature_text": text,
            "text_is_current": text == render(features, settings.ingest),
            "last_event": _iso(state.last_ts),
            "days_since_last_purchase": features.days_since_last_purchase,
            "recent_titles": list(features.recent_titles),
            "queued_for_encoding": dirty_score is not None,
            "redis_bytes": store.memory_usage(user_id),
        },
        "vector": vector.model_dump(mode="json", exclude={"user_id"}),
        "views": view_report(client, store.keys, user_id, settings.interest.view_weights,
                             int(time.time() * 1000)),
        "segment": segment or {"status": "not assigned yet"},
        "features": windows,
    }


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def print_report(report: dict[str, Any]) -> None:
    """A report from ``user_report`` as a table: one block per section."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"user {report['user_id']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value and not all(
                isinstance(v, int | float) for v in value.values()):
            for key, sub in value.items():
                add(f"{prefix}.{key}" if prefix else key, sub)
            return
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = "; ".join(map(str, value)) or "-"
        table.add_row(prefix, "-" if value is None else str(value))

    for section, content in report.items():
        if section in ("user_id", "found"):
            continue
        if isinstance(content, dict):
            table.add_section()
            add(section, content)
        else:
            add(section, content)
    Console().print(table)


def cmd_user(settings: Settings, args: argparse.Namespace) -> int:
    report = user_report(settings, args.user_id)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    elif not report["found"]:
        print(f"segstream: no data for user {args.user_id!r}", file=sys.stderr)
    else:
        print_report(report)
    return 0 if report["found"] else 1


def register(sub: argparse._SubParsersAction, run_sub: argparse._SubParsersAction) -> None:
    """Add ``run ingest``, ``produce``, ``replay`` and ``user`` to the segstream CLI."""
    from segstream_services.runtime import add_service_args
    from segstream_services.source_args import add_source_args

    help_ = ("Consume behaviour events, clean them, keep per-user features in Redis and "
             "queue changed feature texts for the encoder; SIGTERM finishes the batch in "
             "hand, commits and exits.")
    p = run_sub.add_parser("ingest", help=help_, description=help_)
    add_service_args(p, "ingest")
    p.set_defaults(func=cmd_run_ingest)

    help_ = ("Produce a seeded synthetic event stream (users with known interest personas) "
             "into Kafka; the personas are written to a JSON file for scoring.")
    p = sub.add_parser("produce", help=help_, description=help_)
    p.add_argument("--synthetic", action="store_true", help="generate the stream (required)")
    p.add_argument("--users", type=int, default=1_000, help="number of users (1000)")
    p.add_argument("--days", type=int, default=30, help="days of history (30)")
    p.add_argument("--seed", type=int, default=7, help="random seed (7)")
    p.add_argument("--end", default="now", help="newest event time, ISO-8601 or 'now'")
    p.add_argument("--malformed", type=float, default=0.0, metavar="SHARE",
                   help="share of extra malformed records (0)")
    p.add_argument("--duplicates", type=float, default=0.0, metavar="SHARE",
                   help="share of re-sent duplicate events (0)")
    p.add_argument("--bots", type=float, default=0.0, metavar="SHARE",
                   help="share of bot users (0)")
    p.add_argument("--truth", metavar="FILE",
                   help="where to write the personas (synthetic-seedS-usersN.truth.json)")
    _common_produce(p)
    p.set_defaults(func=cmd_produce)

    help_ = ("Replay a CSV or JSONL event file into Kafka in event-time order, with a "
             "column mapping for foreign datasets.")
    p = sub.add_parser("replay", help=help_, description=help_,
                       epilog="example: segstream replay online_retail.csv --map "
                              "user_id=CustomerID,ts=InvoiceDate,item_id=StockCode,"
                              "title=Description,price=UnitPrice,quantity=Quantity "
                              "--set type=purchase --ts-format '%m/%d/%Y %H:%M'")
    add_source_args(p)
    _common_produce(p)
    p.set_defaults(func=cmd_replay)

    help_ = "Show one user's features and feature text."
    p = sub.add_parser("user", help=help_, description=help_)
    p.add_argument("user_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_user)


def _common_produce(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=0.0, metavar="N",
                   help="at most N records a second (0: as fast as possible)")
    p.add_argument("--topic", help="target topic (default: the events topic)")
    p.add_argument("--limit", type=int, default=0, metavar="N",
                   help="stop after N records (0: all)")
