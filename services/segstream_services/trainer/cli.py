"""``segstream finetune``: self-supervised fine-tuning of the encoder on behaviour events."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segstream.config import Settings
from segstream.errors import ConfigError, DataError


def register(sub: Any, run_sub: Any) -> None:
    """Add ``segstream finetune`` (the trainer runs as a job, not a service)."""
    from segstream_services.offline.cli import add_window_arg
    from segstream_services.source_args import add_source_args

    p = sub.add_parser(
        "finetune", help="Fine-tune the encoder on users' histories (self-supervised).",
        description="Contrastive fine-tuning: the feature texts of two neighbouring, disjoint "
        "time windows of one user are a positive pair, other users in the batch are "
        "negatives (InfoNCE); optionally also predict the next window's top category. "
        "Full fine-tuning or LoRA; held-out users, early stopping on the held-out loss. "
        "Writes a versioned model directory (weights, tokenizer, pooling, MODEL_CARD.md, "
        "training.json) that `--model` / encoder.model_path load unchanged.")
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
    src.add_argument("--pairs-per-user", type=int, default=1,
                     help="neighbouring window pairs per user (1)")
    src.add_argument("--min-events", type=int, default=3,
                     help="events per window at least (3)")
    src.add_argument("--max-pairs", type=int, default=0,
                     help="use at most this many pairs, a seeded sample of users (0 = all)")
    src.add_argument("--holdout", type=float, default=0.15,
                     help="share of users held out for early stopping (0.15)")
    m = p.add_argument_group("model and training")
    m.add_argument("--base", metavar="DIR", help="base model directory "
                   "(default: settings.encoder.model_path, i.e. all-MiniLM-L6-v2)")
    m.add_argument("--out", metavar="DIR", default="models",
                   help="parent folder of the new model directory (models)")
    m.add_argument("--name", help="model directory name (default: <base>-ft-<UTC time>)")
    m.add_argument("--objective", choices=("contrastive", "contrastive+category"),
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
    m.add_argument("--eval-every", type=int, default=0,
                   help="steps between held-out evaluations (0 = once per epoch)")
    m.add_argument("--patience", type=int, default=2,
                   help="evaluations without improvement before stopping (2)")
    m.add_argument("--max-steps", type=int, default=0, help="stop after N steps (0 = off)")
    m.add_argument("--seed", type=int, default=0, help="training seed (0)")
    m.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    m.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: settings.encoder.torch_threads)")
    p.set_defaults(func=cmd_finetune)
    register_model(sub)


def register_model(sub: Any) -> None:
    """``segstream model rollout DIR | rollback | status``."""
    p = sub.add_parser("model", help="Roll a new encoder model out (or back) without a "
                       "restart; segment ids follow their members.",
                       description="Model versions in production: rollout re-embeds every "
                       "user with the new model in the background while the old one serves, "
                       "refits the segmenter in the new space with ids mapped by member "
                       "overlap, publishes change records only for users whose segment id "
                       "changed, and switches the encoder workers; rollback returns to the "
                       "previous version; status shows the registry.")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION",
                            parser_class=type(p))
    r = msub.add_parser("rollout", help="Re-embed, migrate segments and switch to DIR.")
    r.add_argument("dir", metavar="DIR", help="model directory (e.g. from segstream finetune)")
    r.add_argument("--settle", type=float, default=3.0, metavar="S",
                   help="seconds the workers get to switch before stale users are re-queued")
    r.set_defaults(func=cmd_model_rollout)
    b = msub.add_parser("rollback", help="Return to the previous model version.")
    b.add_argument("--settle", type=float, default=3.0, metavar="S",
                   help="seconds the workers get to switch before stale users are re-queued")
    b.set_defaults(func=cmd_model_rollback)
    s = msub.add_parser("status", help="Show the active, previous and target model.")
    s.set_defaults(func=cmd_model_status)


def _rollout(settings: Settings) -> Any:
    from segstream.kafka_io import KafkaClients
    from segstream.redis_io import check_redis, redis_client
    from segstream_services.encoder.rollout import Rollout

    client = redis_client(settings.redis)
    check_redis(client)
    producer = KafkaClients(settings.kafka).producer()
    timeout = settings.kafka.request_timeout_ms / 1000

    def publish(topic: str, records: list[tuple[str, dict[str, Any]]]) -> None:
        import json

        futures = [producer.send(topic, key=k.encode(), value=json.dumps(v).encode())
                   for k, v in records]
        producer.flush(timeout=timeout)
        for f in futures:
            f.get(timeout=timeout)

    return Rollout(client, settings.redis.key_prefix, publish, settings.topics.segments,
                   settings.topics.catalog), producer


def _print_report(report: Any, what: str) -> None:
    print(f"{what}: {report.from_version or '-'} -> {report.to_version}")
    print(f"users: {report.users:,}; segment id changed for {report.changed:,} "
          f"({report.changed_share:.1%}); bound {report.bound_changed:,} "
          f"({report.bound_share:.1%}): users outside mutual-majority segment pairs")


def cmd_model_rollout(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from segstream.encoding import Encoder, default_model_path
    from segstream_services.segmenter import store

    console = Console(stderr=True)
    if not Path(args.dir).is_dir():
        raise ConfigError(f"model directory not found: {args.dir}")
    with console.status("loading the new model"):
        encoder = Encoder.from_settings(settings.encoder.model_copy(
            update={"model_path": Path(args.dir)}))
    rollout, producer = _rollout(settings)
    try:
        model, _, _ = store.read_state(rollout.client, rollout.sk)
        current = (model.model_version if model and model.model_version else "")
        current_path = str(settings.encoder.model_path or default_model_path())
        rollout.start(str(Path(args.dir).resolve()), encoder.model_version, current_path,
                      current)
        users = rollout.users()
        with Progress(console=console) as bar:
            task = bar.add_task(f"re-embedding with {encoder.model_version}", total=len(users))
            encoded = rollout.reembed(encoder, users, lambda n: bar.advance(task, n))
        console.print(f"{len(users):,} users, {encoded:,} distinct texts encoded")
        with console.status("cutover: refitting the segmenter in the new space"):
            report = rollout.cutover(users, settings.segmenter.lock_ttl_s, args.settle)
    finally:
        producer.close(timeout=10)
    _print_report(report, "rolled out")
    return 0


def cmd_model_rollback(settings: Settings, args: argparse.Namespace) -> int:
    rollout, producer = _rollout(settings)
    try:
        report = rollout.rollback(settings.segmenter.lock_ttl_s, args.settle)
    finally:
        producer.close(timeout=10)
    _print_report(report, "rolled back")
    return 0


def cmd_model_status(settings: Settings, args: argparse.Namespace) -> int:
    from segstream.redis_io import Keys, check_redis, redis_client
    from segstream_services.encoder.rollout import Registry

    client = redis_client(settings.redis)
    check_redis(client)
    state = Registry(client, Keys(settings.redis.key_prefix)).read()
    if not state:
        print("no rollout yet: every worker serves its configured model")
        return 0
    for name in Registry.FIELDS:
        if state.get(name):
            print(f"{name:>16}: {state[name]}")
    return 0


def _events(args: argparse.Namespace, settings: Settings) -> tuple[list, str]:
    from segstream.errors import InvalidEvent
    from segstream.events import event_from_dict
    from segstream_services.offline.cli import load_events

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


def cmd_finetune(settings: Settings, args: argparse.Namespace) -> int:
    import random

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from segstream.encoding import configure_threads
    from segstream.finetune import (
        EvalPoint,
        FinetuneConfig,
        Hooks,
        Trainer,
        make_pairs,
        split_users,
    )
    from segstream_services.offline.cli import ingest_settings, parse_time

    console = Console(stderr=True)
    for flag in ("pairs_per_user", "min_events"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_pairs < 0:
        raise ConfigError("--max-pairs must be >= 0")
    config = FinetuneConfig(
        base_model=args.base or (str(settings.encoder.model_path)
                                 if settings.encoder.model_path else None),
        objective=args.objective, method="lora" if args.lora else "full",
        train_layers=args.train_layers, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        temperature=args.temperature, aux_weight=args.aux_weight,
        max_length=settings.encoder.max_length, eval_every=args.eval_every,
        patience=args.patience, max_steps=args.max_steps, seed=args.seed, device=args.device)
    config.check()
    if args.lora and args.train_layers:
        raise ConfigError("--train-layers applies to full fine-tuning, not --lora")
    until = parse_time(args.until) if args.until else None
    ingest = ingest_settings(args, settings)
    configure_threads(args.threads or settings.encoder.torch_threads)

    with console.status("reading events"):
        events, source = _events(args, settings)
    with console.status(f"building window pairs from {len(events):,} events"):
        pairs = make_pairs(events, ingest, pairs_per_user=args.pairs_per_user,
                           min_events=args.min_events, until_ms=until)
    if args.max_pairs and len(pairs) > args.max_pairs:
        users = sorted({p.user_id for p in pairs})
        random.Random(args.seed).shuffle(users)
        keep, n = set(), 0
        per_user: dict[str, int] = {}
        for p in pairs:
            per_user[p.user_id] = per_user.get(p.user_id, 0) + 1
        for u in users:
            if n + per_user[u] > args.max_pairs:
                continue
            keep.add(u)
            n += per_user[u]
        pairs = [p for p in pairs if p.user_id in keep]
    if not pairs:
        raise DataError("no user has two windows of --min-events events; lower "
                          "--min-events or give more history")
    train, held = split_users(pairs, args.holdout, args.seed)
    used = [e.ts_ms for e in events if until is None or e.ts_ms < until]
    data = {"source": source, "events_used": len(used),
            "data_window": f"{_iso(min(used))} .. {_iso(max(used))}" if used else "-",
            "until": args.until or "-", "feature_windows_days": list(ingest.windows_days),
            "text_language": ingest.text_language, "pairs_per_user": args.pairs_per_user,
            "min_events_per_window": args.min_events}
    console.print(f"{len(events):,} events → {len(pairs):,} pairs from "
                  f"{len({p.user_id for p in pairs}):,} users: {len(train):,} train, "
                  f"{len(held):,} held out")

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as bar:

        class _Bars(Hooks):
            task = None

            def start(self, total_steps: int) -> None:
                self.task = bar.add_task("fine-tuning", total=total_steps, info="")

            def step(self, step: int, loss: float) -> None:
                bar.update(self.task, completed=step, info=f"loss {loss:.4f}")

            def evaluated(self, point: EvalPoint) -> None:
                bar.console.print(
                    f"step {point.step:>5} (epoch {point.epoch:.2f}): held-out loss "
                    f"{point.loss:.4f}, retrieval@1 {point.accuracy:.3f}, MRR {point.mrr:.3f}"
                    + (f", next-category acc {point.category_accuracy:.3f}"
                       if point.category_accuracy is not None else ""))

        with console.status("loading the base model"):
            trainer = Trainer(config, _Bars())
        started = time.perf_counter()
        result = trainer.run(train, held, args.out, args.name, data)

    from segstream.encoding import Encoder

    version = Encoder(result.path, device="cpu", dtype="float32").model_version
    table = Table(title=f"fine-tuned in {time.perf_counter() - started:.0f}s, "
                  f"{result.steps} steps" + (" (stopped early)" if result.stopped_early else ""))
    for col in ("held-out", "loss", "retrieval@1", "MRR"):
        table.add_column(col, justify="right")
    for label, point in (("base", result.base), (f"best (step {result.best.step})",
                                                  result.best)):
        table.add_row(label, f"{point.loss:.4f}", f"{point.accuracy:.3f}", f"{point.mrr:.3f}")
    Console().print(table)
    print(f"model directory: {result.path}")
    print(f"model version:   {version}")
    print(f"evaluate it:     segstream eval FILE ... --model {result.path}")
    return 0


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")
