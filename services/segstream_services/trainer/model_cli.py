"""``segstream model rollout DIR | rollback | status``: model versions in production."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segstream.config import Settings
from segstream.errors import ConfigError


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
    from segstream.kafka_client import kafka_clients
    from segstream.redis_io import check_redis, redis_client
    from segstream_services.rollout.service import Rollout

    client = redis_client(settings.redis)
    check_redis(client)
    producer = kafka_clients(settings.kafka).producer()
    timeout = settings.kafka.request_timeout_ms / 1000

    def publish(topic: str, records: list[tuple[str, dict[str, Any]]]) -> None:
        import json

        futures = [producer.send(topic, key=k.encode(), value=json.dumps(v).encode())
                   for k, v in records]
        producer.flush(timeout=timeout)
        for f in futures:
            f.get(timeout=timeout)

    return Rollout(client, settings.redis.key_prefix, publish, settings.topics.segments,
                   settings.topics.catalog,
                   assignments_topic=settings.topics.assignments,
                   user_ttl_s=settings.redis.user_ttl_s, settings=settings), producer


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
        model, _, _ = store.read_state(rollout.client, rollout.keys)
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
    from segstream_services.rollout.registry import Registry

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
