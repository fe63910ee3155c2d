"""`segstream fit`: segment every user of a historical file (no Kafka or Redis).

Stages (each with a progress bar): read the events, build profiles and feature texts,
embed each distinct item text and feature text once, aggregate the interest vectors,
combine the views (``settings.interest.view_weights``), choose k (unless given), cluster
with the segmenter, write ``segments.jsonl``, ``catalog.json`` and ``report.html``.
Segment labels are drawn from the interest part of the members' texts (top categories and
item titles), so they name interests, not activity.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from segstream.config import Settings
from segstream.errors import ConfigError
from segstream_services.offline.common import (
    add_window_arg,
    ingest_settings,
    load_encoder,
    load_events,
)
from segstream_services.source_args import add_source_args

K_CANDIDATES = (4, 6, 8, 10, 12, 16, 20)
K_RULE = ("the k in {4, 6, 8, 10, 12, 16, 20} (below the number of users) with the best "
          "cosine silhouette of KMeans on the clustered view, among those whose smallest "
          "segment holds at least 1% of the users")


def register_fit(sub: Any) -> None:
    p = sub.add_parser("fit", help="Segment a historical event file offline (no Kafka/Redis).",
                       description="Profiles, interest vectors, feature texts, embeddings and "
                       "segments for every user of FILE, with the streaming path's own "
                       "code; writes segments.jsonl, catalog.json and report.html into --out.")
    add_source_args(p)
    add_window_arg(p)
    p.add_argument("--k", type=int, help="number of segments (default: "
                   + K_RULE.replace("%", "%%") + ")")  # argparse formats help with %
    p.add_argument("--seed", type=int, default=0, help="clustering seed (default 0)")
    p.add_argument("--model", metavar="DIR", help="encoder model directory")
    p.add_argument("--cache-dir", metavar="DIR", help="keep item and feature-text vectors "
                   "in DIR/<model version>.npz between runs")
    p.add_argument("--out", metavar="DIR", help="output folder (default: fit-<file name>)")
    p.add_argument("--json", action="store_true",
                   help="print the segments (id, label, size, top categories) as JSON")
    p.set_defaults(func=cmd_fit)


def cmd_fit(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from segstream.offline import (
        TextEmbedder,
        build_profiles,
        build_views,
        choose_k,
        segment_vectors,
    )
    from segstream.segmentation import SegConfig
    from segstream_services.offline.report import render_report, segment_profiles_table
    from segstream_services.segmenter.store import catalog_entries

    console = Console(stderr=True)
    out = Path(args.out or f"fit-{Path(args.file).stem}")
    ingest = ingest_settings(args, settings)
    stages = ("reading events", "building profiles", "loading the encoder", "item texts",
              "feature texts", "choosing k", "clustering", "writing the report")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        overall = bar.add_task(stages[0], total=len(stages))

        def stage(name: str) -> None:
            bar.update(overall, advance=1 if name != stages[0] else 0, description=name)

        stage(stages[0])
        events, report = load_events(args, settings)
        stage(stages[1])
        profiles = build_profiles(events, ingest)
        if len(profiles) < 4:
            raise ConfigError(f"{args.file}: {len(profiles)} users; need at least 4 to segment")
        stage(stages[2])
        embed = TextEmbedder(load_encoder(settings, args), cache_dir=args.cache_dir)
        sub_tasks: dict[str, Any] = {}

        def step(what: str, n: int, total: int) -> None:
            if what not in sub_tasks:
                stage(what)
                sub_tasks[what] = bar.add_task(f"  embedding {what}", total=total)
            bar.advance(sub_tasks[what], n)

        views = build_views(events, profiles, embed, ingest, settings.interest, step)
        embed.save()
        matrix = views.matrix(settings.interest.view_weights)
        stage(stages[5])
        k_scores: dict[int, tuple[float, float]] = {}
        if args.k:
            k, rule = args.k, "given with --k"
        else:
            k, k_scores = choose_k(matrix, K_CANDIDATES, seed=args.seed)
            rule = K_RULE
        users = views.users
        if not 2 <= k <= len(users):
            raise ConfigError(f"--k must be between 2 and the number of users ({len(users)})")
        stage(stages[6])
        now_ms = max(e.ts_ms for e in events)
        seg = segment_vectors(users, matrix, views.label_texts,
                              SegConfig(k=k, seed=args.seed), now_ms)
        catalog = catalog_entries(seg.segmenter, now_ms)
        stage(stages[7])
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
        weights = settings.interest.view_weights
        facts = {"file": str(args.file),
                 "events": f"{len(events):,} valid of {report.rows:,} rows",
                 "users": f"{len(users):,}",
                 "clustered view": ", ".join(f"{v} × {w:g}" for v, w in weights.items()
                                             if w > 0),
                 "interest vectors": f"half-life {settings.interest.half_life_days:g} days, "
                 f"items centred: {settings.interest.center_items}; "
                 f"{views.no_interest:,} users without one; events: {views.counts}",
                 "encoder": f"{embed.encoder.model_version} ({embed.encoder.device}, "
                            f"{embed.encoder.dtype_name})",
                 "feature windows (days)": ", ".join(map(str, ingest.windows_days))}
        (out / "report.html").write_text(render_report(
            f"segstream fit: {Path(args.file).name}", seg, rows, k_scores, k, rule, facts))
        bar.update(overall, advance=1)
    summary = [{"segment_id": r["segment_id"], "tier_path": r["tier_path"], "label": r["label"],
                "size": r["size"], "top_categories": r["top_categories"]} for r in rows]
    if args.json:
        print(json.dumps({"k": k, "users": len(users), "out": str(out), "segments": summary},
                         indent=2, ensure_ascii=False))
    else:
        from rich.table import Table

        table = Table(title=f"{k} segments of {len(users):,} users")
        for col in ("segment", "tier path", "label", "users"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["segment_id"], " › ".join(r["tier_path"]), r["label"],
                          str(r["size"]))
        Console(width=max(Console().width, 120)).print(table)
    console.print(f"wrote {out}/segments.jsonl, catalog.json and report.html")
    return 0
