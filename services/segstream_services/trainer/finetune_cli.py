"""``segstream finetune``: self-supervised fine-tuning of the encoder on behaviour events."""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segstream.config import Settings
from segstream.errors import ConfigError, DataError

DESCRIPTION = (
    "Self-supervised fine-tuning, symmetric InfoNCE with in-batch negatives. "
    "contrastive: the feature texts of two neighbouring, disjoint time windows of one user "
    "are a positive pair (contrastive+category also predicts the next window's top category). "
    "cooccurrence: item texts (title, category path); items one user takes in the same "
    "basket or in a row are positives (a cap per user, popular items down-weighted), items "
    "held out for early stopping and a cold-start check. Full fine-tuning, the last N layers "
    "or LoRA. Writes a versioned model directory (weights, tokenizer, pooling, "
    "MODEL_CARD.md, training.json) that `--model` / encoder.model_path load unchanged.")


def register_finetune(sub: Any) -> None:
    """Add ``segstream finetune``."""
    from segstream_services.offline.common import add_window_arg
    from segstream_services.source_args import add_source_args

    p = sub.add_parser("finetune", help="Fine-tune the encoder on behaviour (self-supervised).",
                       description=DESCRIPTION)
    src = p.add_argument_group("data (an event file, mapped like `segstream eval`, or "
                               "--synthetic)")
    src.add_argument("--synthetic", action="store_true", help="train on generated personas")
    src.add_argument("--users", type=int, default=400, help="synthetic users (400)")
    src.add_argument("--days", type=int, default=30, help="days of synthetic history (30)")
    src.add_argument("--seed-data", type=int, default=7, help="generator seed (7)")
    add_source_args(src, positional=False)
    add_window_arg(src)
    src.add_argument("--until", metavar="TIME", help="use only events before TIME (ISO); "
                     "evaluate after it so the judge never sees training data")
    src.add_argument("--pairs-per-user", type=int, help="window pairs per user (1); "
                     "cooccurrence: item pairs per user at most (50)")
    src.add_argument("--min-events", type=int, default=3,
                     help="events per window at least (3)")
    src.add_argument("--max-pairs", type=int, default=0,
                     help="use at most this many pairs (0 = all)")
    src.add_argument("--holdout", type=float, help="share of users held out for early "
                     "stopping (0.15); cooccurrence: share of items (0.1)")
    it = p.add_argument_group("item pairs (--objective cooccurrence)")
    it.add_argument("--pair-kinds", default="basket,sequence",
                    help="basket (same basket), sequence (one after the other) or both")
    it.add_argument("--basket-gap", type=float, default=0.0, metavar="S",
                    help="a user's events at most S seconds apart are one basket (0: the "
                    "same instant)")
    it.add_argument("--sequence-gap", type=float, default=86_400.0, metavar="S",
                    help="consecutive baskets at most S seconds apart pair up (86400)")
    it.add_argument("--popularity-power", type=float, default=0.5, help="a pair's sampling "
                    "weight is (users(a) * users(b)) ** -POWER (0.5; 0 = no down-weighting)")
    it.add_argument("--min-support", type=int, default=1, metavar="USERS",
                    help="keep only pairs that at least USERS users took (1)")
    it.add_argument("--max-basket-items", type=int, default=30,
                    help="items sampled from a larger basket (30)")
    m = p.add_argument_group("model and training")
    m.add_argument("--base", metavar="DIR", help="base model directory "
                   "(default: settings.encoder.model_path, i.e. all-MiniLM-L6-v2)")
    m.add_argument("--out", metavar="DIR", default="models",
                   help="parent folder of the new model directory (models)")
    m.add_argument("--name", help="model directory name (default: <base>-ft-<UTC time>)")
    m.add_argument("--objective", choices=("contrastive", "contrastive+category",
                                           "cooccurrence"),
                   default="contrastive", help="training objective (contrastive)")
    m.add_argument("--lora", action="store_true", help="train a LoRA adapter (peft) and "
                   "merge it, instead of full fine-tuning")
    m.add_argument("--lora-r", type=int, default=8, help="LoRA rank (8)")
    m.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha (16)")
    m.add_argument("--lora-targets", default="query,key,value",
                   help="linear layers LoRA adapts (query,key,value)")
    m.add_argument("--train-layers", type=int, default=0,
                   help="full fine-tuning: train only the last N layers (0 = all)")
    m.add_argument("--epochs", type=int, default=2, help="epochs at most (2)")
    m.add_argument("--batch-size", type=int, default=32, help="pairs per batch (32)")
    m.add_argument("--lr", type=float, help="learning rate (2e-5 full, 2e-4 LoRA)")
    m.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature")
    m.add_argument("--aux-weight", type=float, default=0.3,
                   help="weight of the next-category loss (0.3)")
    m.add_argument("--max-length", type=int, metavar="TOKENS", help="truncate training texts "
                   "(default: settings.encoder.max_length or the base model's); the saved "
                   "model keeps the base model's maximum")
    m.add_argument("--eval-every", type=int, default=0,
                   help="steps between held-out evaluations (0 = once per epoch)")
    m.add_argument("--patience", type=int, default=2,
                   help="evaluations without improvement before stopping (2)")
    m.add_argument("--max-steps", type=int, default=0, help="stop after N steps (0 = off)")
    m.add_argument("--seed", type=int, default=0, help="seed of sampling and training (0)")
    m.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    m.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: settings.encoder.torch_threads)")
    p.set_defaults(func=cmd_finetune)


def _events(args: argparse.Namespace, settings: Settings) -> tuple[list, str]:
    from segstream.errors import InvalidEvent
    from segstream.events import event_from_dict
    from segstream_services.offline.common import load_events

    if args.synthetic == bool(args.file):
        raise ConfigError("give exactly one of --file FILE and --synthetic")
    if not args.synthetic:
        if not Path(args.file).is_file():
            raise ConfigError(f"--file: no such file: {args.file}")
        events, report = load_events(args, settings)
        return events, f"{args.file} ({report.rows:,} rows)"
    from segstream.synthetic import SyntheticStream

    if args.users < 4 or args.days < 2:
        raise ConfigError("--synthetic needs --users >= 4 and --days >= 2")
    stream = SyntheticStream(users=args.users, days=args.days, seed=args.seed_data)
    events = []
    for row in stream.events():
        try:
            events.append(event_from_dict(row, settings.events.allowed_types))
        except InvalidEvent:
            continue
    return events, f"synthetic personas (users={args.users}, days={args.days}, " \
                   f"seed={args.seed_data})"


def _check_args(args: argparse.Namespace) -> None:
    if args.pairs_per_user is not None and args.pairs_per_user < 1:
        raise ConfigError("--pairs-per-user must be at least 1")
    if args.min_events < 1:
        raise ConfigError("--min-events must be at least 1")
    if args.max_pairs < 0:
        raise ConfigError("--max-pairs must be >= 0")
    if args.holdout is not None and not 0 < args.holdout < 1:
        raise ConfigError("--holdout must be between 0 and 1")
    if args.lora and args.train_layers:
        raise ConfigError("--train-layers applies to full fine-tuning, not --lora")


def _window_pairs(args: argparse.Namespace, events: list, ingest: Any, until: int | None
                  ) -> tuple[list, list, dict[str, Any], None]:
    from segstream.finetune import make_pairs, split_users

    pairs = make_pairs(events, ingest, pairs_per_user=args.pairs_per_user or 1,
                       min_events=args.min_events, until_ms=until)
    if args.max_pairs and len(pairs) > args.max_pairs:  # a seeded sample of whole users
        users = sorted({p.user_id for p in pairs})
        random.Random(args.seed).shuffle(users)
        per_user: dict[str, int] = {}
        for p in pairs:
            per_user[p.user_id] = per_user.get(p.user_id, 0) + 1
        keep, n = set(), 0
        for u in users:
            if n + per_user[u] <= args.max_pairs:
                keep.add(u)
                n += per_user[u]
        pairs = [p for p in pairs if p.user_id in keep]
    if not pairs:
        raise DataError("no user has two windows of --min-events events; lower "
                          "--min-events or give more history")
    train, held = split_users(pairs, args.holdout or 0.15, args.seed)
    info = {"feature_windows_days": list(ingest.windows_days),
            "text_language": ingest.text_language,
            "pairs_per_user": args.pairs_per_user or 1, "min_events_per_window": args.min_events}
    return train, held, info, None


def _item_pairs(args: argparse.Namespace, events: list, until: int | None
                ) -> tuple[list, list, dict[str, Any], Callable[..., dict[str, Any]]]:
    from segstream.finetune import (
        catalog_for,
        cooccurrence_check,
        held_items,
        make_item_pairs,
        split_items,
    )

    kinds = tuple(k.strip() for k in args.pair_kinds.split(",") if k.strip())
    built = make_item_pairs(events, until_ms=until, kinds=kinds,
                            basket_gap_s=args.basket_gap, sequence_gap_s=args.sequence_gap,
                            per_user=args.pairs_per_user or 50, max_pairs=args.max_pairs,
                            popularity_power=args.popularity_power,
                            max_basket_items=args.max_basket_items,
                            min_support=args.min_support, seed=args.seed)
    if len(built.pairs) < 4:
        raise DataError(f"{len(built.pairs)} item pairs: events need titles or categories "
                          "and users with two items in a basket or in a row")
    train, held = split_items(built.pairs, args.holdout or 0.1, args.seed)
    new, catalog = held_items(train, held), catalog_for(train, held)

    def check(embed: Callable[..., Any]) -> dict[str, Any]:
        return cooccurrence_check(embed, held, built.items, new, catalog, seed=args.seed)

    info = {"pair_kinds": ",".join(kinds), "basket_gap_s": args.basket_gap,
            "sequence_gap_s": args.sequence_gap, "pairs_per_user_cap": args.pairs_per_user or 50,
            "popularity_power": args.popularity_power, "min_support": args.min_support,
            "pair_sampling": built.stats}
    return train, held, info, check


def cmd_finetune(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from segstream.encoding import configure_threads
    from segstream.finetune import FinetuneConfig, Trainer
    from segstream_services.offline.common import ingest_settings, parse_time
    from segstream_services.trainer.progress import bars, print_result

    console = Console(stderr=True)
    _check_args(args)
    config = FinetuneConfig(
        base_model=args.base or (str(settings.encoder.model_path)
                                 if settings.encoder.model_path else None),
        objective=args.objective, method="lora" if args.lora else "full",
        train_layers=args.train_layers, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        temperature=args.temperature, aux_weight=args.aux_weight,
        max_length=args.max_length or settings.encoder.max_length,
        eval_every=args.eval_every, patience=args.patience, max_steps=args.max_steps,
        seed=args.seed, device=args.device)
    config.check()
    until = parse_time(args.until, "--until") if args.until else None
    ingest = ingest_settings(args, settings)
    configure_threads(args.threads or settings.encoder.torch_threads)

    with console.status("reading events"):
        events, source = _events(args, settings)
    items = args.objective == "cooccurrence"
    with console.status(f"building {'item' if items else 'window'} pairs from "
                        f"{len(events):,} events"):
        train, held, info, check = (_item_pairs(args, events, until) if items
                                    else _window_pairs(args, events, ingest, until))
    used = [e.ts_ms for e in events if until is None or e.ts_ms < until]
    data = {"source": source, "events_used": len(used),
            "data_window": f"{_iso(min(used))} .. {_iso(max(used))}" if used else "-",
            "until": args.until or "-"} | info
    console.print(f"{len(events):,} events → {len(train) + len(held):,} pairs: "
                  f"{len(train):,} train, {len(held):,} held out")
    with bars(console) as hooks:
        with console.status("loading the base model"):
            trainer = Trainer(config, hooks)
        started = time.perf_counter()
        result = trainer.run(train, held, args.out, args.name, data, check)
    print_result(result, time.perf_counter() - started)
    return 0


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")
