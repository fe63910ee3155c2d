"""The user's feature hash as Redis stores it (``Keys.features``): parsing its fields and
the apply script's replies, and the fields and members ingest derives from an event (its
dedup digest, the offset-watermark field of its partition). See ``feature_store`` for the
key layout."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from functools import lru_cache

from segstream.features import UserState

BUCKETS_CACHED = 100_000  # distinct bucket values kept parsed (rebuilt when full)
_BUCKETS: dict[str, dict[str, int]] = {}


def dedup_member(event_id: str) -> bytes:
    """The 8-byte digest stored for an event id (collisions: ~1e-15 per user window)."""
    return hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()


@lru_cache(maxsize=4096)
def watermark_field(topic: str, partition: int) -> str:
    return f"_o:{zlib.crc32(topic.encode()):08x}:{partition}"


def _bucket(value: str) -> dict[str, int]:
    """A bucket's ``"sub=n;sub=n"`` as a dict, shared with every caller: treat it as
    read-only. Parsed values are kept (``BUCKETS_CACHED``): a user's older days come back
    unchanged in every batch."""
    found = _BUCKETS.get(value)
    if found is None:
        found = {}
        for pair in value.split(";"):
            sub, _, amount = pair.rpartition("=")
            if sub:
                found[sub] = int(amount)
        if len(_BUCKETS) >= BUCKETS_CACHED:
            _BUCKETS.clear()
        _BUCKETS[value] = found
    return found


def parse_state(pairs: Iterable[tuple[str, str]], titles: Iterable[tuple[str, float]],
                shared: bool = False) -> UserState:
    """A ``UserState`` from the feature hash's (field, value) pairs and (title, score)s.

    ``shared``: the bucket dicts are the parse cache's own (no copy; for a state that is
    only read, as ingest's summary of each touched user)."""
    state = UserState()
    buckets = state.buckets
    for key, value in pairs:
        if key.startswith("_"):
            if key == "_last":
                state.last_ts = int(value) if int(value) >= 0 else None
            elif key == "_dx":
                state.newest_day = int(value) if int(value) >= 0 else None
            elif key == "_rm":
                state.rate_minute = int(value)
            elif key == "_rn":
                state.rate_count = int(value)
            continue
        buckets[key] = _bucket(value) if shared else _bucket(value).copy()
    state.titles = {title: int(float(score)) for title, score in titles}
    return state


def split_pairs(joined: bytes) -> list[tuple[str, str]]:
    """A reply string of the apply script (fields joined by \\x1f) as (field, value)s."""
    parts = joined.decode().split("\x1f") if joined else []
    return list(zip(parts[0::2], parts[1::2], strict=True))
