"""The input event contract (docs/contracts.md): what is accepted, and why the rest is refused."""

from __future__ import annotations

import json

import pytest

from segstream.config import DEFAULT_EVENT_TYPES
from segstream.errors import InvalidEvent
from segstream.events import REASONS, parse_event, ts_to_iso

TYPES = frozenset(DEFAULT_EVENT_TYPES)
BASE = {
    "event_id": "e-1",
    "user_id": "u-1",
    "ts": "2026-11-28T10:15:00+01:00",
    "type": "purchase",
    "item_id": "sku-9",
}


def encode(obj: object) -> bytes:
    return json.dumps(obj).encode()


def with_(**changes: object) -> bytes:
    event = {**BASE, **changes}
    return encode({k: v for k, v in event.items() if v is not ...})


def test_minimal_event_is_accepted() -> None:
    event = parse_event(encode(BASE), TYPES)
    assert event.event_id == "e-1"
    assert event.user_id == "u-1"
    assert event.type == "purchase"
    assert event.ts_ms == 1_795_857_300_000  # 09:15 UTC
    assert event.category is None and event.price is None


def test_full_event_keeps_every_optional_field_and_ignores_unknown_ones() -> None:
    raw = with_(category="electronics/audio", title="Wireless earbuds", price=59.9,
                quantity=2, dwell_s=12.5, rating=4, extra_field={"x": 1})
    event = parse_event(raw, TYPES)
    assert event.to_dict() == {
        "event_id": "e-1", "user_id": "u-1", "ts_ms": 1_795_857_300_000, "type": "purchase",
        "item_id": "sku-9", "category": "electronics/audio", "title": "Wireless earbuds",
        "price": 59.9, "quantity": 2, "dwell_s": 12.5, "rating": 4.0,
    }


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        (1_795_857_300_000, 1_795_857_300_000),           # epoch milliseconds
        ("2026-11-28T09:15:00Z", 1_795_857_300_000),       # Z suffix
        ("2026-11-28T09:15:00.250+00:00", 1_795_857_300_250),
        ("2026-11-28 04:15:00-05:00", 1_795_857_300_000),  # space separator, negative offset
    ],
)
def test_timestamp_forms(ts: object, expected_ms: int) -> None:
    assert parse_event(with_(ts=ts), TYPES).ts_ms == expected_ms


def test_type_is_normalised_and_extensible() -> None:
    assert parse_event(with_(type=" VIEW "), TYPES).type == "view"
    assert parse_event(with_(type="download"), TYPES | {"download"}).type == "download"


def test_null_optional_fields_count_as_absent() -> None:
    event = parse_event(with_(price=None, category=None, quantity=None), TYPES)
    assert event.price is None and event.category is None and event.quantity is None


def test_str_input_and_iso_round_trip() -> None:
    event = parse_event(json.dumps(BASE), TYPES)
    assert ts_to_iso(event.ts_ms) == "2026-11-28T09:15:00Z"


INVALID = [
    # (id, raw bytes, expected reason)
    ("not-utf8", b'{"event_id": "\xff\xfe"}', "not_utf8"),
    ("latin1-bytes", "{\"user_id\": \"Jos\xe9\"}".encode("latin-1"), "not_utf8"),
    ("empty", b"", "not_json"),
    ("truncated-json", b'{"event_id": "e-1", ', "not_json"),
    ("plain-text", b"hello world", "not_json"),
    ("json-array", encode([BASE]), "not_object"),
    ("json-string", encode("event"), "not_object"),
    ("json-null", b"null", "not_object"),
    ("json-number", b"42", "not_object"),
    ("missing-event-id", with_(event_id=...), "missing_field"),
    ("missing-user-id", with_(user_id=...), "missing_field"),
    ("missing-ts", with_(ts=...), "missing_field"),
    ("missing-type", with_(type=...), "missing_field"),
    ("missing-item-id", with_(item_id=...), "missing_field"),
    ("null-user-id", with_(user_id=None), "missing_field"),
    ("user-id-number", with_(user_id=123), "wrong_type"),
    ("event-id-list", with_(event_id=["e"]), "wrong_type"),
    ("item-id-object", with_(item_id={"id": 1}), "wrong_type"),
    ("title-number", with_(title=5), "wrong_type"),
    ("price-string", with_(price="9.99"), "wrong_type"),
    ("price-bool", with_(price=True), "wrong_type"),
    ("quantity-fraction", with_(quantity=1.5), "wrong_type"),
    ("quantity-string", with_(quantity="2"), "wrong_type"),
    ("ts-bool", with_(ts=True), "wrong_type"),
    ("ts-list", with_(ts=[2026]), "wrong_type"),
    ("user-id-too-long", with_(user_id="u" * 129), "too_long"),
    ("event-id-too-long", with_(event_id="e" * 129), "too_long"),
    ("title-too-long", with_(title="t" * 513), "too_long"),
    ("empty-user-id", with_(user_id="   "), "bad_value"),
    ("negative-price", with_(price=-1), "bad_value"),
    ("nan-price", b'{"event_id":"e","user_id":"u","ts":1795857300000,"type":"view",'
                  b'"item_id":"i","price":NaN}', "bad_value"),
    ("infinite-dwell", b'{"event_id":"e","user_id":"u","ts":1795857300000,"type":"view",'
                       b'"item_id":"i","dwell_s":Infinity}', "bad_value"),
    ("zero-quantity", with_(quantity=0), "bad_value"),
    ("negative-dwell", with_(dwell_s=-3), "bad_value"),
    ("ts-garbage", with_(ts="yesterday"), "bad_timestamp"),
    ("ts-no-zone", with_(ts="2026-11-28T09:15:00"), "bad_timestamp"),
    ("ts-epoch-seconds", with_(ts=1_795_940_100), "bad_timestamp"),
    ("ts-negative", with_(ts=-5), "bad_timestamp"),
    ("ts-year-9999", with_(ts="9999-01-01T00:00:00Z"), "bad_timestamp"),
    ("unknown-type", with_(type="teleport"), "unknown_type"),
    ("oversize-record", with_(title="x" * 400, category="c" * 70_000), "too_large"),
]


@pytest.mark.parametrize(("raw", "reason"), [(r, why) for _, r, why in INVALID],
                         ids=[name for name, _, _ in INVALID])
def test_invalid_records_are_refused_with_their_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, TYPES)
    assert caught.value.reason == reason
    assert caught.value.reason in REASONS
    assert caught.value.detail  # a human-readable explanation, never empty


def test_there_are_at_least_25_distinct_invalid_cases() -> None:
    assert len({name for name, _, _ in INVALID}) >= 25
    assert {why for _, _, why in INVALID} == set(REASONS)
