"""The encoder→segmenter stream's group and trimming (the segmenter's side of it)."""

from __future__ import annotations

import redis


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group from the start of the stream (and the stream) if missing."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def stream_id(raw: bytes | str) -> tuple[int, int]:
    """``(ms, seq)`` of a stream entry id, comparable in stream order."""
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)


def trim_acknowledged(client: redis.Redis, stream: str) -> int:
    """Remove the entries every consumer group has acknowledged: ``XTRIM MINID`` to the
    oldest entry a group still has pending, or else to the last entry it was delivered
    (newer ones are unread). Returns the number of entries removed."""
    floor: tuple[int, int] | None = None
    for group in client.xinfo_groups(stream):
        first = group["last-delivered-id"]
        if group["pending"]:
            first = client.xpending(stream, group["name"])["min"] or first
        at = stream_id(first)
        floor = at if floor is None else min(floor, at)
    if floor is None or floor == (0, 0):
        return 0
    return int(client.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))
