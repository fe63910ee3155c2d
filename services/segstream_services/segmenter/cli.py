"""``segstream run segmenter`` and ``segstream segments``; ``user_segment_info`` for
``segstream user ID``."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import redis

from segstream.config import Settings
from segstream.features import Rfm
from segstream.keys import Keys
from segstream.records import iso
from segstream.redis_io import check_redis, decode_fields, redis_client
from segstream_services.segmenter import store


def register(sub: Any, run_sub: Any) -> None:
    """Add ``run segmenter`` and ``segments`` to the ``segstream`` parser."""
    from segstream_services.runtime import add_service_args

    p = run_sub.add_parser(
        "segmenter", help="Segment embedded users online and publish segment changes.",
        description="Read the embedded-users stream, update the online clusterer, publish "
                    "segment changes and the segment catalog; SIGTERM finishes the batch in "
                    "hand, acknowledges it and exits.")
    add_service_args(p, "segmenter")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "segments", help="List segments: id, tier path, label, size, description.",
        description="List the segment catalog (interest families and fine segments) "
                    "as stored by the segmenter.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="include retired segments")
    p.set_defaults(func=cmd_segments)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from segstream.health import service_health
    from segstream_services.runtime import run_service, service_options
    from segstream_services.segmenter.service import SegmenterService

    port, idle_exit_s = service_options(args, settings.segmenter.metrics_port)
    client = redis_client(settings.redis)
    check_redis(client)
    service = SegmenterService(settings, client)
    run_service("segmenter", service, metrics=service.metrics.base,
                port=port, health=service_health(settings, client=client, state=service.epoch),
                idle_exit_s=idle_exit_s,
                summary=lambda _: f"centroids version {service.model.version}")
    return 0


def catalog(settings: Settings, client: redis.Redis, include_retired: bool = False
            ) -> list[dict[str, Any]]:
    """Catalog entries, families first, each followed by its segments (ids in order)."""
    keys = Keys(settings.redis.key_prefix)
    entries = [json.loads(v) for v in client.hgetall(keys.seg_catalog()).values()]
    if not include_retired:
        entries = [e for e in entries if e["status"] == "active"]

    def order(e: dict[str, Any]) -> tuple[int, int, int]:
        path = e["tier_path"]
        fam = int(path[0][1:]) if path[0].startswith("f") else 0
        return (fam, e["tier"], int(e["segment_id"][1:]))

    return sorted(entries, key=order)


def cmd_segments(settings: Settings, args: argparse.Namespace) -> int:
    client = redis_client(settings.redis)
    check_redis(client)
    rows = catalog(settings, client, include_retired=args.all)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no segments yet (the segmenter buffers users until its cold start completes)")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="segstream segments")
    for col in ("id", "tier path", "label", "size", "status", "description"):
        table.add_column(col)
    for e in rows:
        ident = e["segment_id"] if e["tier"] == 1 else f"  {e['segment_id']}"
        table.add_row(ident, " > ".join(e["tier_path"]), e["label"], str(e["size"]),
                      e["status"], e["description"])
    Console().print(table)
    return 0


def user_segment_info(settings: Settings, redis_client: redis.Redis, user_id: str
                      ) -> dict[str, Any] | None:
    """A user's segment, confidence, memberships, tier path (with labels) and engagement
    tier; None when the segmenter has not assigned the user yet."""
    keys = Keys(settings.redis.key_prefix)
    raw = decode_fields(redis_client.hgetall(keys.seg(user_id)))
    if not raw.get("segment_id"):
        return None
    rfm = Rfm.from_fields(redis_client.hgetall(keys.rfm(user_id)))
    now = int(time.time() * 1000)
    path = json.loads(raw["tier_path"])
    labels = []
    for node, entry in zip(path, redis_client.hmget(keys.seg_catalog(), path), strict=True):
        labels.append(json.loads(entry)["label"] if entry else node)
    return {
        "segment_id": raw["segment_id"],
        "label": labels[-1],
        "confidence": float(raw["confidence"]),
        "memberships": [{"segment_id": s, "weight": w}
                        for s, w in json.loads(raw["memberships"])],
        "tier_path": path,
        "tier_labels": labels,
        "engagement_tier": store.engagement(raw, rfm, settings, now),
        "model_version": raw.get("model_version"),
        "centroids_version": int(raw.get("centroids_version") or 0),
        "assigned_at": iso(int(raw["assigned_ms"])) if raw.get("assigned_ms") else None,
    }
