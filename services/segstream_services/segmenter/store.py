"""Where the segmenter keeps its state in Redis, and the records it publishes.

Key layout (all segmenter-wide keys share the hash tag ``{<prefix>:seg}``, so they live on
one Redis Cluster slot; per-user keys use the user tag of ``Keys.user``):

- ``{p:seg}:state``   hash: ``model`` (zlib-compressed JSON of ``OnlineSegmenter.to_dict``),
                      ``rev`` (+1 per write: other consumers reload when it moved),
                      ``version`` (centroids version), ``applied`` (JSON list of the most
                      recent stream entry ids whose effect is in ``model``)
- ``{p:seg}:catalog`` hash: segment or family id -> current catalog entry (JSON)
- ``{p:seg}:lock``    string: the lease that serialises model updates across consumers
- ``u:{uid}:seg``     hash: segment_id, confidence, memberships, tier_path, text_hash,
                      model_version, centroids_version, assigned_ms, engagement,
                      first_seen_ms, last_active_ms, frequency, monetary (short values
                      only, so Redis keeps it as a compact listpack)
- ``u:{uid}:segtext`` string: the feature text at the user's last segment change (the
                      next change record lists the sentences that changed since)
"""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import redis

from segstream.config import Settings
from segstream.feature_store import parse_state
from segstream.features import summarize, zone
from segstream.redis_io import Keys
from segstream.segmentation import OnlineSegmenter
from segstream.segmentation.engagement import EngagementThresholds, engagement_tier

SCHEMA_VERSION = 1
APPLIED_KEEP = 4096


class SegKeys:
    """Segmenter key names (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        self.keys = Keys(prefix)
        self.tag = f"{{{prefix}:seg}}"

    @property
    def state(self) -> str:
        return f"{self.tag}:state"

    @property
    def catalog(self) -> str:
        return f"{self.tag}:catalog"

    @property
    def lock(self) -> str:
        return f"{self.tag}:lock"

    def user(self, user_id: str) -> str:
        return self.keys.user(user_id, "seg")

    def text(self, user_id: str) -> str:
        return self.keys.user(user_id, "segtext")


def iso(ms: int | float) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``segstream/schemas``."""
    text = resources.files("segstream").joinpath(f"schemas/{name}.schema.json").read_text()
    return json.loads(text)


def encode_model(model: OnlineSegmenter) -> bytes:
    return zlib.compress(json.dumps(model.to_dict(), separators=(",", ":")).encode(), 3)


def decode_model(raw: bytes) -> OnlineSegmenter:
    return OnlineSegmenter.from_dict(json.loads(zlib.decompress(raw)))


def read_rev(client: redis.Redis, keys: SegKeys) -> int:
    raw = client.hget(keys.state, "rev")
    return int(raw) if raw else 0


def read_state(client: redis.Redis, keys: SegKeys) -> tuple[OnlineSegmenter | None, int,
                                                             list[str]]:
    """The stored model (None before the first write), its revision and applied ids."""
    raw = client.hmget(keys.state, ["model", "rev", "applied"])
    if raw[0] is None:
        return None, 0, []
    return decode_model(raw[0]), int(raw[1] or 0), json.loads(raw[2] or b"[]")


def rfm(raw_features: dict[bytes, bytes], settings: Settings) -> dict[str, Any]:
    """Recency, frequency and monetary value from the ingest feature hash (event time):
    the newest event, events and spend over the longest window, and the oldest kept day
    (a lower bound of tenure). Empty when ingest keeps no features for the user."""
    if not raw_features:
        return {}
    state = parse_state(((k.decode(), v.decode()) for k, v in raw_features.items()), ())
    if state.last_ts is None:
        return {}
    longest = max(summarize(state, settings.ingest).windows, key=lambda w: w.days)
    days = [int(name.split(":", 1)[1]) for name in state.buckets if ":" in name]
    tz = zone(settings.ingest.timezone)
    oldest = (int(datetime.fromordinal(min(days)).replace(tzinfo=tz).timestamp() * 1000)
              if days else state.last_ts)
    return {"last_active_ms": state.last_ts, "frequency": longest.events,
            "monetary": round(longest.spend, 2), "oldest_event_ms": oldest}


def engagement(seg: dict[str, str], raw_features: dict[bytes, bytes], settings: Settings,
               now_ms: int) -> str | None:
    """A user's engagement tier now: ingest's event-time RFM when it has features, else
    what the segmenter stored at the last assignment."""
    found = rfm(raw_features, settings)
    if not found:
        return seg.get("engagement")
    s = settings.segmenter
    first = min(int(seg.get("first_seen_ms") or found["oldest_event_ms"]),
                found["oldest_event_ms"])
    return engagement_tier(first, found["last_active_ms"], found["frequency"], now_ms,
                           found["monetary"], EngagementThresholds(
                               s.new_days, s.at_risk_days, s.dormant_days, s.loyal_frequency,
                               s.loyal_spend or float("inf")))


def decode_hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def change_record(a: Any, label: str, engagement: str, text_changes: dict[str, list[str]],
                  model_version: str, centroids_version: int, event_ms: int, now_ms: int
                  ) -> dict[str, Any]:
    """The ``segstream.segments`` record of one changed ``Assignment``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "user_id": a.key,
        "segment_id": a.segment_id,
        "tier_path": a.tier_path,
        "label": label,
        "confidence": round(min(1.0, max(0.0, a.confidence)), 6),
        "memberships": [{"segment_id": s, "weight": round(min(1.0, max(0.0, w)), 6)}
                        for s, w in a.memberships],
        "previous_segment_id": a.previous_segment_id,
        "explanation": {
            "reason": a.reason,
            "distance": round(a.distance, 6),
            "previous_distance": (None if a.previous_distance is None
                                  else round(a.previous_distance, 6)),
            "distance_margin": round(a.margin, 6),
            "text_changes": text_changes,
        },
        "engagement_tier": engagement,
        "model_version": model_version,
        "centroids_version": centroids_version,
        "event_time": iso(event_ms),
        "emitted_at": iso(now_ms),
    }


def catalog_entries(model: OnlineSegmenter, now_ms: int) -> dict[str, dict[str, Any]]:
    """The catalog entry of every segment and family the model has ever had."""
    out: dict[str, dict[str, Any]] = {}
    version = max(1, model.version)
    for sid, seg in model.segments.items():
        out[sid] = {
            "schema_version": SCHEMA_VERSION, "segment_id": sid, "tier": 2,
            "tier_path": model.tier_path(sid),
            "status": "active" if seg.active else "retired",
            "label": seg.label or "unlabelled", "description": seg.description,
            "top_terms": seg.top_terms, "size": seg.size, "children": seg.children,
            "centroids_version": version, "model_version": model.model_version,
            "lineage": {
                "born_at": iso(seg.born_ms), "origin": seg.origin, "parents": seg.parents,
                "split_from": seg.parents[0] if seg.origin == "split" else None,
                "merged_into": seg.merged_into,
                "retired_at": None if seg.retired_ms is None else iso(seg.retired_ms),
            },
            "updated_at": iso(now_ms),
        }
    for fid, fam in model.families.items():
        out[fid] = {
            "schema_version": SCHEMA_VERSION, "segment_id": fid, "tier": 1,
            "tier_path": [fid], "status": "active" if fam.retired_ms is None else "retired",
            "label": fam.label or "unlabelled", "description": fam.description,
            "top_terms": [], "size": sum(model.segments[s].size for s in fam.members),
            "children": sorted(fam.members, key=lambda s: int(s[1:])),
            "centroids_version": version, "model_version": model.model_version,
            "lineage": {
                "born_at": iso(fam.born_ms), "origin": "family", "parents": [],
                "split_from": None, "merged_into": None,
                "retired_at": None if fam.retired_ms is None else iso(fam.retired_ms),
            },
            "updated_at": iso(now_ms),
        }
    return out


def signature(entry: dict[str, Any]) -> str:
    """What makes a catalog entry worth republishing (not the clock or small size moves)."""
    keep = {k: v for k, v in entry.items()
            if k not in ("updated_at", "centroids_version", "size", "event")}
    return json.dumps(keep, sort_keys=True)
