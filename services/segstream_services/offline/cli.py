"""`segstream eval` and `segstream fit`: the offline path, one process, no Kafka or Redis."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segstream.config import IngestSettings, Settings
from segstream.errors import ConfigError, DataError, InvalidEvent
from segstream.events import Event, event_from_dict
from segstream.sources import ReadReport
from segstream_services.source_args import add_source_args, read_mapped


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
    add_window_arg(p)
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
    register_fit(sub)


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from segstream.encoding import Encoder
    from segstream.offline import TextEmbedder
    from segstream_services.offline.evaluate import (
        METHODS,
        EvalConfig,
        rolling_splits,
        run_eval,
    )

    if args.k < 2 or args.seeds < 1:
        raise ConfigError("--k must be at least 2 and --seeds at least 1")
    ingest = ingest_settings(args, settings)
    given = [parse_time(t) for t in (args.split_time or "").split(",") if t.strip()]
    console = Console(stderr=True)
    with console.status("reading events"):
        events, report = load_events(args, settings)
    console.print(f"{len(events):,} events from {report.rows:,} rows "
                  f"({sum(report.skipped.values()):,} skipped: {report.skipped or 'none'})")
    splits = rolling_splits(events, args.rolling, args.horizon_days) if args.rolling else given
    config = EvalConfig(split_ms=splits, horizon_days=args.horizon_days,
                        stability_days=args.stability_days, k=args.k,
                        seeds=tuple(range(args.seeds)), min_rating=args.min_rating)
    encoder_settings = settings.encoder
    if args.model:
        encoder_settings = encoder_settings.model_copy(update={"model_path": args.model})
    with console.status("loading the encoder"):
        embed = TextEmbedder(Encoder.from_settings(encoder_settings))
    with console.status("evaluating") as status:
        result = run_eval(events, ingest, embed, config,
                          progress=lambda msg: status.update(f"evaluating: {msg}"))
    if not result.splits_used:
        raise DataError("no split had users with history before it and liked items after "
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


K_CANDIDATES = (4, 6, 8, 10, 12, 16, 20)
K_RULE = ("the k in {4, 6, 8, 10, 12, 16, 20} (below the number of users) with the best "
          "cosine silhouette of KMeans on the embeddings, among those whose smallest "
          "segment holds at least 1% of the users")


def register_fit(sub: Any) -> None:
    p = sub.add_parser("fit", help="Segment a historical event file offline (no Kafka/Redis).",
                       description="Profiles, feature texts, embeddings and segments for "
                       "every user of FILE, with the streaming path's own code; writes "
                       "segments.jsonl, catalog.json and report.html.")
    add_source_args(p)
    add_window_arg(p)
    p.add_argument("--k", type=int, help="number of segments (default: "
                   + K_RULE.replace("%", "%%") + ")")  # argparse formats help with %
    p.add_argument("--seed", type=int, default=0, help="clustering seed (default 0)")
    p.add_argument("--model", metavar="DIR", help="encoder model directory")
    p.add_argument("--out", metavar="DIR", help="output folder (default: fit-<file name>)")
    p.set_defaults(func=cmd_fit)


def cmd_fit(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from segstream.encoding import Encoder
    from segstream.offline import TextEmbedder, build_profiles, choose_k, segment_profiles
    from segstream.records import catalog_entries
    from segstream.segmentation import SegConfig
    from segstream_services.offline.report import render_report, segment_profiles_table

    console = Console(stderr=True)
    out = Path(args.out or f"fit-{Path(args.file).stem}")
    ingest = ingest_settings(args, settings)
    with console.status("reading events"):
        events, report = load_events(args, settings)
    with console.status(f"building profiles from {len(events):,} events"):
        profiles = build_profiles(events, ingest)
    if len(profiles) < 4:
        raise DataError(f"{args.file}: {len(profiles)} users; need at least 4 to segment")
    encoder_settings = settings.encoder
    if args.model:
        encoder_settings = encoder_settings.model_copy(update={"model_path": args.model})
    with console.status("loading the encoder"):
        embed = TextEmbedder(Encoder.from_settings(encoder_settings))
    users = sorted(profiles)
    texts = [profiles[u].text for u in users]
    with Progress(console=console) as bar:
        task = bar.add_task("encoding feature texts", total=len(set(texts)))
        vectors = embed(texts, progress=lambda n: bar.advance(task, n))
    k_scores: dict[int, tuple[float, float]] = {}
    if args.k:
        k, rule = args.k, "given with --k"
    else:
        with console.status("choosing k"):
            k, k_scores = choose_k(vectors, K_CANDIDATES, seed=args.seed)
        rule = K_RULE
    if not 2 <= k <= len(users):
        raise ConfigError(f"--k must be between 2 and the number of users ({len(users)})")
    now_ms = max(e.ts_ms for e in events)
    with console.status(f"clustering {len(users):,} users into {k} segments"):
        seg = segment_profiles(profiles, embed, SegConfig(k=k, seed=args.seed), now_ms)
    catalog = catalog_entries(seg.segmenter, now_ms)

    out.mkdir(parents=True, exist_ok=True)
    with (out / "segments.jsonl").open("w") as fh:
        for a in seg.assignments:
            fh.write(json.dumps({
                "user_id": a.key, "segment_id": a.segment_id, "tier_path": a.tier_path,
                "label": catalog.get(a.segment_id, {}).get("label", ""),
                "confidence": round(a.confidence, 4),
                "memberships": [{"segment_id": s, "weight": round(w, 4)}
                                for s, w in a.memberships],
                "feature_text": profiles[a.key].text}, ensure_ascii=False) + "\n")
    (out / "catalog.json").write_text(json.dumps(catalog, indent=1, ensure_ascii=False))
    rows = segment_profiles_table(seg, profiles, catalog)
    facts = {"file": str(args.file), "events": f"{len(events):,} valid of {report.rows:,} rows",
             "users": f"{len(users):,}", "distinct feature texts": f"{len(set(texts)):,}",
             "encoder": f"{embed.encoder.model_version} ({embed.encoder.device}, "
                        f"{embed.encoder.dtype_name})",
             "feature windows (days)": ", ".join(map(str, ingest.windows_days))}
    (out / "report.html").write_text(render_report(f"segstream fit: {Path(args.file).name}",
                                                   seg, rows, k_scores, k, rule, facts))
    from rich.table import Table

    table = Table(title=f"{k} segments of {len(users):,} users")
    for col in ("segment", "tier path", "label", "users"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["segment_id"], " › ".join(r["tier_path"]), r["label"], str(r["size"]))
    Console(width=max(Console().width, 120)).print(table)
    console.print(f"wrote {out}/segments.jsonl, catalog.json and report.html")
    return 0
