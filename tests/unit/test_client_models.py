"""The client's pydantic models agree with the JSON Schemas shipped in segstream/schemas."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError
from referencing import Registry, Resource

from segstream.client import check_segment_id, check_user_id
from segstream.client_models import (
    CatalogEntry,
    ChangeRecord,
    Explanation,
    Lineage,
    LineageEvent,
    Membership,
    TextChanges,
    decode_cursor,
    encode_cursor,
    load_schema,
)
from segstream.errors import DataError

CHANGE = {
    "schema_version": 1, "user_id": "u1", "segment_id": "s3", "tier_path": ["f1", "s3"],
    "label": "trail running / camping", "confidence": 0.71,
    "memberships": [{"segment_id": "s3", "weight": 0.71}, {"segment_id": "s1", "weight": 0.2}],
    "previous_segment_id": "s1",
    "explanation": {"reason": "moved", "distance": 0.4, "previous_distance": 0.6,
                    "distance_margin": 0.2,
                    "text_changes": {"added": ["Mostly camping."], "removed": []}},
    "engagement_tier": "active", "model_version": "all-MiniLM-L6-v2-abc123",
    "centroids_version": 4, "event_time": "2026-01-02T03:04:05.006Z",
    "emitted_at": "2026-01-02T03:04:06Z",
}
CATALOG = {
    "schema_version": 1, "segment_id": "s3", "tier": 2, "tier_path": ["f1", "s3"],
    "status": "active", "label": "camping", "description": "camping, trail shoes",
    "top_terms": ["camping"], "size": 40, "children": [], "centroids_version": 2,
    "model_version": None,
    "lineage": {"born_at": "2026-01-01T00:00:00Z", "origin": "split", "parents": ["s1"],
                "split_from": "s1", "merged_into": None, "retired_at": None},
    "event": {"event": "split", "parents": ["s1"], "into": None, "at": "2026-01-01T00:00:00Z"},
    "updated_at": "2026-01-02T00:00:00Z",
}


def _required(model: type[BaseModel]) -> set[str]:
    return {name for name, f in model.model_fields.items() if f.is_required()}


@pytest.mark.parametrize(("model", "schema", "path"), [
    (ChangeRecord, "segment_change", ()),
    (Explanation, "segment_change", ("explanation",)),
    (TextChanges, "segment_change", ("explanation", "text_changes")),
    (Membership, "segment_change", ("memberships", "items")),
    (CatalogEntry, "catalog_entry", ()),
    (Lineage, "catalog_entry", ("lineage",)),
    (LineageEvent, "catalog_entry", ("event",)),
])
def test_model_fields_match_the_schema(model: type[BaseModel], schema: str,
                                       path: tuple[str, ...]) -> None:
    node: dict[str, Any] = load_schema(schema)
    for step in path:
        node = node[step] if step == "items" else node["properties"][step]
    assert set(model.model_fields) == set(node["properties"])
    assert _required(model) == set(node.get("required", ()))


def _assignment_validator() -> jsonschema.Draft202012Validator:
    base = "https://segstream.dev/schemas/"
    registry = Registry().with_resources(
        (base + f"{name}.schema.json", Resource.from_contents(load_schema(name)))
        for name in ("segment_change", "assignment"))
    return jsonschema.Draft202012Validator(load_schema("assignment"), registry=registry)


def test_records_valid_under_the_schema_are_valid_models_and_dump_back_valid() -> None:
    jsonschema.validate(CHANGE, load_schema("segment_change"))
    jsonschema.validate(CATALOG, load_schema("catalog_entry"))
    _assignment_validator().validate(CHANGE)
    record = ChangeRecord.model_validate(CHANGE)
    assert record.explanation.text_changes.added == ["Mostly camping."]
    jsonschema.validate(record.model_dump(mode="json"), load_schema("segment_change"))
    entry = CatalogEntry.model_validate(CATALOG)
    assert entry.lineage.split_from == "s1"
    jsonschema.validate(entry.model_dump(mode="json"), load_schema("catalog_entry"))


@pytest.mark.parametrize(("field", "value"), [
    ("segment_id", "f1"), ("confidence", 1.5), ("engagement_tier", "vip"),
    ("memberships", []), ("schema_version", 2), ("surprise", 1),
])
def test_records_the_schema_refuses_the_model_refuses(field: str, value: Any) -> None:
    bad = {**CHANGE, field: value}
    with pytest.raises(jsonschema.ValidationError):
        _assignment_validator().validate(bad)
    with pytest.raises(ValidationError):
        ChangeRecord.model_validate(bad)


def test_cursor_round_trip_and_garbage() -> None:
    for member in (b"u1", "用户-ü".encode(), b"a" * 128, b"\xff\x00"):
        assert decode_cursor(encode_cursor(member)) == member
    for bad in ("", "!!!", "a"):
        with pytest.raises(ValueError, match="invalid cursor"):
            decode_cursor(bad)


@pytest.mark.parametrize("bad", ["", "  ", "x" * 129, "a\x00b", "line\nbreak", "\ud800",
                                 "}u", "a{b}", 42])
def test_malformed_user_ids_are_refused_in_one_line(bad: object) -> None:
    with pytest.raises(DataError, match=r"^invalid user id"):
        check_user_id(bad)


def test_user_ids_are_read_as_ingest_stores_them() -> None:
    assert check_user_id("用户 42") == "用户 42"
    assert check_user_id("caf\u0065\u0301") == "caf\u00e9"  # NFD -> NFC, as ingest does


@pytest.mark.parametrize("bad", ["", "s", "x1", "s1a", "s-1", "s١"])
def test_malformed_segment_ids_are_refused(bad: str) -> None:
    with pytest.raises(DataError, match="invalid segment id"):
        check_segment_id(bad)
    assert check_segment_id("f2") == "f2"
