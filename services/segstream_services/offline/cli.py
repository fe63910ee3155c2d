"""`segstream eval` and `segstream fit`: the offline path, one process, no Kafka or Redis."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from segstream.config import Settings
from segstream.errors import ConfigError, DataError
from segstream_services.offline.common import (
    add_window_arg,
    ingest_settings,
    load_encoder,
    load_events,
    parse_list,
    parse_time,
)
from segstream_services.offline.fit import register_fit as register_fit_command
from segstream_services.offline.methods import METHOD_KEYS
from segstream_services.source_args import add_source_args


def register(sub: Any, run_sub: Any) -> None:
    p = sub.add_parser("eval", help="Compare segstream's segments with baselines on a file.",
                       description="Temporal-split evaluation: segment popularity from "
                       "segstream's views (interest vector, feature text, their "
                       "combination, and interest vector over co-occurrence-smoothed item "
                       "vectors) vs global popularity, RFM, item co-occurrence SVD and "
                       "category histogram + KMeans (HR@10, NDCG@10, coverage, stability "
                       "7 and 30 days apart).")
    add_source_args(p)
    add_window_arg(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--split-time", metavar="T[,T...]",
                      help="split time(s), ISO dates (UTC unless a zone is given)")
    when.add_argument("--rolling", type=int, metavar="N",
                      help="N split times spread over the data (rolling origin)")
    p.add_argument("--horizon-days", type=float, default=180.0,
                   help="length of the truth period after each split (default 180)")
    p.add_argument("--stability-days", default="7,30", metavar="D[,D...]",
                   help="stability compares with the segments D days before T (default 7,30)")
    p.add_argument("--tune-until", metavar="T",
                   help="choose the interest half-life, item centring, view weights and "
                   "the co-occurrence weight on the splits whose truth period ends before "
                   "T (logged with probes and baselines); report only splits at or "
                   "after T (default: use the settings' values, no tuning)")
    p.add_argument("--no-search", action="store_true",
                   help="with --tune-until: keep the settings' values (no search); the "
                   "splits before T are left out all the same")
    p.add_argument("--k", default="8", metavar="K[,K...]",
                   help="segments for every method, e.g. 8,32 (default 8)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.add_argument("--methods", metavar="NAME[,NAME...]",
                   help=f"report only these rows (default all): {', '.join(METHOD_KEYS)}")
    p.add_argument("--min-rating", type=float, default=4.0,
                   help="ratings below this are not positive interactions (default 4.0)")
    p.add_argument("--model", metavar="DIR", help="encoder model directory, e.g. a "
                   "fine-tuned one (default: settings.encoder, i.e. all-MiniLM-L6-v2)")
    p.add_argument("--cache-dir", metavar="DIR", help="keep item and feature-text vectors "
                   "in DIR/<model version>.npz between runs")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--out", metavar="DIR", help="write eval.json and eval.md into DIR")
    p.set_defaults(func=cmd_eval)
    register_fit(sub)


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from segstream.offline import TextEmbedder
    from segstream_services.offline.evaluate import (
        EvalConfig,
        rolling_splits,
        run_eval,
        total_steps,
    )
    from segstream_services.offline.tables import eval_markdown, eval_table

    ks = parse_list(args.k, "--k")
    if min(ks) < 2 or args.seeds < 1:
        raise ConfigError("--k must be at least 2 and --seeds at least 1")
    stability_days = parse_list(args.stability_days, "--stability-days", float)
    ingest = ingest_settings(args, settings)
    given = [parse_time(t) for t in (args.split_time or "").split(",") if t.strip()]
    tune_until = parse_time(args.tune_until, "--tune-until") if args.tune_until else None
    keys = [m.strip() for m in (args.methods or ",".join(METHOD_KEYS)).split(",") if m.strip()]
    unknown = [m for m in keys if m not in METHOD_KEYS]
    if unknown or not keys:
        raise ConfigError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(METHOD_KEYS)}")
    if args.model and not Path(args.model).is_dir():
        raise ConfigError(f"--model: no such directory: {args.model}")
    console = Console(stderr=True)
    with console.status("reading events"):
        events, report = load_events(args, settings)
    console.print(f"{len(events):,} events from {report.rows:,} rows "
                  f"({sum(report.skipped.values()):,} skipped: {report.skipped or 'none'})")
    splits = rolling_splits(events, args.rolling, args.horizon_days) if args.rolling else given
    config = EvalConfig(split_ms=splits, horizon_days=args.horizon_days,
                        stability_days=stability_days, ks=ks, seeds=tuple(range(args.seeds)),
                        min_rating=args.min_rating, tune_until_ms=tune_until,
                        search=not args.no_search,
                        methods=tuple(METHOD_KEYS[m] for m in dict.fromkeys(keys)))
    with console.status("loading the encoder"):
        embed = TextEmbedder(load_encoder(settings, args), cache_dir=args.cache_dir)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("preparing", total=total_steps(config))
        result = run_eval(events, ingest, settings.interest, embed, config,
                          progress=lambda msg: bar.update(task, description=msg),
                          tick=lambda msg: bar.update(task, advance=1, description=msg),
                          segmenter=settings.segmenter)
    embed.save()
    if not result.splits_used:
        raise DataError("no split had users with history before it and liked items after "
                          "it; choose other --split-time values or a longer --horizon-days")
    payload = result.to_json() | {"model_version": embed.encoder.model_version,
                                  "file": str(args.file)}
    Console(width=max(Console().width, 132), stderr=args.json).print(eval_table(result))
    console.print(f"encoder: {embed.encoder.model_version} on {embed.encoder.device}; "
                  f"{len(embed.cache):,} distinct texts embedded; chosen: {result.chosen}")
    advice = result.factors_advice
    if advice is not None and embed.encoder.item_factors is None:
        console.print(factors_line(advice), soft_wrap=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(payload, indent=2, default=float))
        (out / "eval.md").write_text(eval_markdown(result))
        console.print(f"wrote {out}/eval.json and eval.md")
    if args.json:
        print(json.dumps(payload, indent=2, default=float))
    return 0


def factors_line(advice: dict) -> str:
    """One line on what the tuning splits say of an item-factor table."""
    figures = (f"interest ⊕ item co-occurrence factors {advice['factors_ndcg']:.4f} vs the "
               f"interest vector {advice['interest_ndcg']:.4f} mean NDCG@10 on the tuning "
               "splits")
    if not advice["build"]:
        return f"item factors: {figures}; keep the interest vector"
    return (f"item factors: {figures}; to serve them: segstream factors build FILE ... "
            f"--weight {advice['weight']:g}{'' if advice['scaled'] else ' --plain'} "
            "--out DIR, then segstream model rollout DIR")


def register_fit(sub: Any) -> None:
    register_fit_command(sub)
