"""The input event contract (docs/contracts.md): what is accepted, and why the rest is refused."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segstream.config import DEFAULT_EVENT_TYPES
from segstream.errors import InvalidEvent
from segstream.events import FIELDS, REASONS, Event, explain, parse_event, ts_to_iso

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


def raw_with(**literals: str) -> bytes:
    """BASE plus fields whose JSON text is given verbatim (numbers json cannot write)."""
    extra = "".join(f', "{k}": {v}' for k, v in literals.items())
    rest = {k: v for k, v in BASE.items() if k not in literals}
    return encode(rest)[:-1] + extra.encode() + b"}"


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
    # poison records: each must be refused with a reason, never raise anything else
    ("ts-400-digits", with_(ts=10**399), "bad_timestamp"),
    ("ts-minus-400-digits", with_(ts=-(10**399)), "bad_timestamp"),
    ("ts-1e400", raw_with(ts="1e400"), "bad_timestamp"),
    ("ts-5000-digits", raw_with(ts="9" * 5000), "bad_timestamp"),
    ("quantity-5000-digits", raw_with(quantity="9" * 5000), "bad_value"),
    ("price-5000-digits", raw_with(price="9" * 5000), "bad_value"),
    ("price-400-digits", with_(price=10**399), "bad_value"),
    ("rating-400-digits", with_(rating=-(10**399)), "bad_value"),
    ("quantity-beyond-int64", with_(quantity=2**63), "bad_value"),
    ("price-1e400", raw_with(price="1e400"), "bad_value"),
    ("ts-nan", raw_with(ts="NaN"), "bad_value"),
    ("rating-minus-infinity", raw_with(rating="-Infinity"), "bad_value"),
    ("nested-10000-in-field", raw_with(extra="[" * 10_000 + "]" * 10_000), "too_deep"),
    ("nested-10000-objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "too_deep"),
    ("nested-10000-top-level-array", b"[" * 10_000 + b"]" * 10_000, "too_deep"),
    ("duplicate-user-id", encode(BASE)[:-1] + b', "user_id": "u-2"}', "duplicate_key"),
    ("duplicate-ts", encode(BASE)[:-1] + b', "ts": 1795857300000}', "duplicate_key"),
    ("duplicate-price-null", with_(price=5)[:-1] + b', "price": null}', "duplicate_key"),
    ("duplicate-escaped-key", encode(BASE)[:-1] + b', "user\\u005fid": "u-2"}',
     "duplicate_key"),
    ("duplicate-and-wrong-type", encode(BASE)[:-1] + b', "item_id": 5}', "duplicate_key"),
    ("user-id-tab", with_(user_id="u\t1"), "bad_value"),
    ("user-id-nul", with_(user_id="u\x001"), "bad_value"),
    ("user-id-c1-control", with_(user_id="u\x851"), "bad_value"),
    ("item-id-newline", with_(item_id="sku\n9"), "bad_value"),
    ("event-id-line-separator", with_(event_id="e\u20281"), "bad_value"),
    ("user-id-brace-first", with_(user_id="}u-1"), "bad_value"),
    ("user-id-hash-tag", with_(user_id="a{b}c"), "bad_value"),
    ("lone-surrogate-title", with_(title="ok \udc00"), "bad_value"),
    ("lone-surrogate-item-id", with_(item_id="\ud800"), "bad_value"),
    ("utf8-encoded-surrogate", b'{"user_id": "\xed\xa0\x80"}', "not_utf8"),
    ("overlong-utf8", b'{"user_id": "\xc0\xaf"}', "not_utf8"),
    ("bom-prefixed", b"\xef\xbb\xbf" + encode(BASE), "not_json"),
    ("json-true", b"true", "not_object"),
    ("trailing-garbage", encode(BASE) + b"{}", "not_json"),
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


# ---- identifiers, limits and repeated keys ------------------------------------------------

def test_nfc_and_nfd_spellings_are_one_user_item_and_category() -> None:
    composed = unicodedata.normalize("NFC", "Zoë-Ångström")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    a = parse_event(with_(user_id=composed, item_id=composed, category=composed), TYPES)
    b = parse_event(with_(user_id=decomposed, item_id=decomposed, category=decomposed),
                    TYPES)
    assert a == b and a.user_id == composed  # written with \\u escapes (json's default)
    utf8 = json.dumps({**BASE, "user_id": decomposed}, ensure_ascii=False).encode()
    assert parse_event(utf8, TYPES).user_id == composed


def test_record_exactly_at_the_size_limit_is_accepted_one_byte_more_is_not() -> None:
    filler = 1000 - len(with_(blob=""))
    at_limit = with_(blob="x" * filler)
    assert len(at_limit) == 1000
    assert parse_event(at_limit, TYPES, max_bytes=1000).user_id == "u-1"
    with pytest.raises(InvalidEvent) as caught:
        parse_event(with_(blob="x" * (filler + 1)), TYPES, max_bytes=1000)
    assert caught.value.reason == "too_large"


def test_huge_or_repeated_unknown_fields_are_ignored() -> None:
    raw = raw_with(extra="9" * 5000, blob="[" * 500 + "]" * 500)
    assert parse_event(raw, TYPES).event_id == "e-1"
    repeated = encode(BASE)[:-1] + b', "extra": 1, "extra": 2, "nested": {"type": 1}}'
    assert parse_event(repeated, TYPES).type == "purchase"
    look_alike = with_(title='say "user_id": "x", "ts": 1')  # field names inside a string
    assert parse_event(look_alike, TYPES).title == 'say "user_id": "x", "ts": 1'


def test_integral_float_quantity_and_large_finite_numbers_are_valid() -> None:
    event = parse_event(with_(quantity=2.0, price=10**20, rating=-3), TYPES)
    assert event.quantity == 2 and event.price == 1e20 and event.rating == -3.0


def test_ids_with_braces_other_than_user_ids_are_valid() -> None:
    event = parse_event(with_(item_id="{sku}", event_id="}e{"), TYPES)
    assert event.item_id == "{sku}" and event.event_id == "}e{"


# ---- the fast path agrees with the explaining path; nothing else is ever raised -----------

TEXTS = st.sampled_from(["u-1", "", "  ", "x" * 129, "x" * 600, "Zoë", "Zoe\u0308", "a\tb",
                         "a\x85b", "}u", "{u}", "\ud800", "view", " PURCHASE ", "teleport",
                         "2026-11-28T09:15:00Z", "2026-11-28T09:15:00", "9" * 30])
NUMBERS = st.sampled_from([0, 1, -1, 2.0, 1.5, 10**19, 2**63, 10**399, -(10**399),
                           1_795_857_300_000, 1_795_857_300_000.5, 1e308, -0.0, True])
VALUES = st.one_of(TEXTS, NUMBERS, st.none(), st.just([1]), st.just({"a": 1}))


@st.composite
def records(draw: Any) -> bytes:
    fields = {name: draw(VALUES) for name in draw(st.sets(st.sampled_from(FIELDS)))}
    fields = {**{k: v for k, v in BASE.items() if draw(st.booleans())}, **fields}
    text = json.dumps(fields, ensure_ascii=draw(st.booleans()))
    if fields and draw(st.booleans()):  # repeat one key, maybe spelled with an escape
        key = draw(st.sampled_from(sorted(fields)))
        spelled = key if draw(st.booleans()) else key.replace("_", "\\u005f")
        text = text[:-1] + f', "{spelled}": {json.dumps(draw(VALUES))}}}'
    if draw(st.booleans()):
        text = text.replace("99999", "NaN", 1)
    return text.encode("utf-8", "surrogatepass")


def outcome(parse: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(raw, TYPES)
    except InvalidEvent as exc:
        assert exc.reason in REASONS and exc.detail
        return "refused", exc.reason


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_fast_path_and_explaining_path_agree(raw: bytes) -> None:
    assert outcome(parse_event, raw) == outcome(explain, raw)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda b, i, x: b[:i] + x + b[i + 1:], st.just(encode(BASE)),
                           st.integers(0, len(encode(BASE))), st.binary(min_size=1,
                                                                       max_size=3))))
def test_arbitrary_bytes_are_an_event_or_a_refusal(raw: bytes) -> None:
    kind, value = outcome(parse_event, raw)
    assert isinstance(value, Event) if kind == "ok" else value in REASONS
