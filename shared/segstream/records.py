"""The output records, built in one place and checked against their JSON Schemas.

- ``change_record``: one ``segstream.segments`` record (``schemas/segment_change``), keyed
  by user id, for a user's first assignment or a segment change;
- ``catalog_entries``/``with_event``: ``segstream.catalog`` entries
  (``schemas/catalog_entry``), keyed by segment or family id.

Every record is validated when it is built, by a Draft 2020-12 validator compiled once per
schema and process (``jsonschema_rs``, a compiled validator: the pure-Python ``jsonschema``
costs about 1 ms a record; ``bench/bench_records.py`` measures both). A record that fails
is a bug in segstream, not bad input: ``RecordContractError`` names the record, the
failing field and the rule, and nothing is published.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import jsonschema_rs

if TYPE_CHECKING:
    from segstream.segmentation import Assignment, OnlineSegmenter

SCHEMA_VERSION = 1
SEGMENT_CHANGE, CATALOG_ENTRY = "segment_change", "catalog_entry"


class RecordContractError(RuntimeError):
    """A record segstream built does not match its own schema (a bug: nothing is sent)."""


def iso(ms: int | float) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``segstream/schemas`` (``segment_change``, ``catalog_entry``)."""
    text = resources.files("segstream").joinpath(f"schemas/{name}.schema.json").read_text()
    result: dict[str, Any] = json.loads(text)
    return result


@cache
def validator(name: str) -> Any:
    """The compiled validator of schema ``name`` (built once per process)."""
    return jsonschema_rs.Draft202012Validator(load_schema(name))


def validate(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` itself when it matches schema ``name``; else ``RecordContractError``."""
    v = validator(name)
    if not v.is_valid(record):
        err = next(iter(v.iter_errors(record)))
        where = "/".join(str(p) for p in err.instance_path) or "(record)"
        ident = record.get("user_id") or record.get("segment_id") or "?"
        raise RecordContractError(f"{name} record {ident!r} breaks its schema at {where}: "
                                  f"{err.message}")
    return record


def _unit(x: float) -> float:
    return round(min(1.0, max(0.0, x)), 6)


def build_change_record(a: Assignment, label: str, engagement: str,
                        text_changes: dict[str, list[str]], model_version: str,
                        centroids_version: int, event_ms: int, now_ms: int) -> dict[str, Any]:
    """The ``segstream.segments`` record of one changed ``Assignment``, unchecked (use
    ``change_record``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "user_id": a.key,
        "segment_id": a.segment_id,
        "tier_path": a.tier_path,
        "label": label,
        "confidence": _unit(a.confidence),
        "memberships": [{"segment_id": s, "weight": _unit(w)} for s, w in a.memberships],
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


def change_record(a: Assignment, label: str, engagement: str,
                  text_changes: dict[str, list[str]], model_version: str,
                  centroids_version: int, event_ms: int, now_ms: int) -> dict[str, Any]:
    """The validated ``segstream.segments`` record of one changed ``Assignment``."""
    return validate(SEGMENT_CHANGE, build_change_record(
        a, label, engagement, text_changes, model_version, centroids_version, event_ms,
        now_ms))


def _lineage(born_ms: int, origin: str, parents: list[str], split_from: str | None,
             merged_into: str | None, retired_ms: int | None) -> dict[str, Any]:
    return {"born_at": iso(born_ms), "origin": origin, "parents": parents,
            "split_from": split_from, "merged_into": merged_into,
            "retired_at": None if retired_ms is None else iso(retired_ms)}


def build_catalog_entries(model: OnlineSegmenter, now_ms: int) -> dict[str, dict[str, Any]]:
    """The catalog entry of every segment and family the model has ever had, unchecked
    (use ``catalog_entries``)."""
    out: dict[str, dict[str, Any]] = {}
    version = max(1, model.version)
    common = {"schema_version": SCHEMA_VERSION, "centroids_version": version,
              "model_version": model.model_version}
    for sid, seg in model.segments.items():
        out[sid] = {
            **common, "segment_id": sid, "tier": 2, "tier_path": model.tier_path(sid),
            "status": "active" if seg.active else "retired",
            "label": seg.label or "unlabelled", "description": seg.description,
            "top_terms": seg.top_terms, "size": seg.size, "children": seg.children,
            "lineage": _lineage(seg.born_ms, seg.origin, seg.parents,
                                seg.parents[0] if seg.origin == "split" else None,
                                seg.merged_into, seg.retired_ms),
            "updated_at": iso(now_ms),
        }
    for fid, fam in model.families.items():
        out[fid] = {
            **common, "segment_id": fid, "tier": 1, "tier_path": [fid],
            "status": "active" if fam.retired_ms is None else "retired",
            "label": fam.label or "unlabelled", "description": fam.description,
            "top_terms": [], "size": sum(model.segments[s].size for s in fam.members),
            "children": sorted(fam.members, key=lambda s: int(s[1:])),
            "lineage": _lineage(fam.born_ms, "family", [], None, None, fam.retired_ms),
            "updated_at": iso(now_ms),
        }
    return out


def catalog_entries(model: OnlineSegmenter, now_ms: int) -> dict[str, dict[str, Any]]:
    """The validated catalog entry of every segment and family the model has ever had."""
    entries = build_catalog_entries(model, now_ms)
    for entry in entries.values():
        validate(CATALOG_ENTRY, entry)
    return entries


def with_event(entry: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """A catalog entry that names the lineage event (from ``drain_events``) that caused its
    publication; validated."""
    return validate(CATALOG_ENTRY, {**entry, "event": {
        "event": event["event"], "parents": event["parents"], "into": event["into"],
        "at": iso(event["at_ms"])}})


def signature(entry: dict[str, Any]) -> str:
    """What makes a catalog entry worth republishing (not the clock or small size moves)."""
    keep = {k: v for k, v in entry.items()
            if k not in ("updated_at", "centroids_version", "size", "event")}
    return json.dumps(keep, sort_keys=True)
