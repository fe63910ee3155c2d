"""The input event contract (docs/contracts.md) and its validation.

``parse_event(raw, allowed_types)`` turns the bytes of one Kafka record into an ``Event``
or raises ``InvalidEvent`` with a reason from ``REASONS`` (a small fixed set, usable as a
metric label) and a human-readable detail naming the field. It never raises anything else,
whatever the bytes: a poison record becomes a dead letter, not a dead consumer.

Decoding: msgspec decodes a record straight into ``_Wire``, whose annotations carry the
contract's types, string lengths and lower bounds, so a valid record is decoded and
validated in C; Python then checks only what a type cannot say (blank strings, the
identifier rules, the timestamp's form and range, the event type, repeated fields). A record
msgspec refuses goes to ``explain``, which applies the same rules to a generic decode to
name the reason and the field (both give the same answer for every input; a property test
checks it).

Rules beyond types:

- Identifiers (``event_id``, ``user_id``, ``item_id``) and ``category``/``title`` are
  NFC-normalised, so composed and decomposed spellings are one user, item or category.
  Identifiers containing a control character (Unicode Cc), a line/paragraph separator or a
  lone surrogate are refused (``bad_value``), not stripped: two producers sending "a\\tb" and
  "ab" are not silently merged. Text fields refuse only lone surrogates.
- A ``user_id`` containing ``{`` or ``}`` is refused (``bad_value``): the user's Redis keys
  carry it as the cluster hash tag ``{<user_id>}``, which a brace would cut short.
- A contract field given twice in one object is refused (``duplicate_key``) instead of the
  last copy silently winning; unknown fields are ignored, repeated or not.
- Numbers beyond int64 (``quantity``) or the float range (``price``, ``dwell_s``, ``rating``)
  are ``bad_value``; a ``ts`` beyond 1990..2100, of any size, is ``bad_timestamp``.
- Nesting deeper than the decoder's recursion limit (about 1,000 levels) is ``too_deep``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from segstream.errors import InvalidEvent

REASONS = (
    "too_large",        # record bigger than the configured limit
    "not_utf8",         # bytes that are not UTF-8
    "not_json",         # text that is not JSON
    "too_deep",         # JSON nested deeper than the decoder's limit
    "not_object",       # JSON that is not an object
    "duplicate_key",    # a contract field appears twice in the object
    "missing_field",    # a required field is absent or null
    "wrong_type",       # a field has the wrong JSON type
    "too_long",         # a string longer than its limit
    "bad_value",        # a number out of range, NaN/Infinity, empty string, bad identifier
    "bad_timestamp",    # ts unparsable, without zone, or outside the supported range
    "unknown_type",     # event type not in the configured list
)

ID_MAX = 128
TITLE_MAX = 512
CATEGORY_MAX = 256
# Epoch-millisecond range accepted as a timestamp at all (1990-01-01 .. 2100-01-01);
# "too old / too far in the future" relative to now is a cleaning rule, not validation.
TS_MIN_MS = 631_152_000_000
TS_MAX_MS = 4_102_444_800_000
INT64_MAX = 2**63 - 1
FIELDS = ("event_id", "user_id", "ts", "type", "item_id", "category", "title", "price",
          "quantity", "dwell_s", "rating")


class Event(msgspec.Struct, frozen=True, gc=False):
    """A validated behaviour event. ``ts_ms`` is epoch milliseconds, UTC.

    (A frozen msgspec struct: built in C, several times faster than a frozen dataclass.)
    """

    event_id: str
    user_id: str
    ts_ms: int
    type: str
    item_id: str
    category: str | None = None
    title: str | None = None
    price: float | None = None
    quantity: int | None = None
    dwell_s: float | None = None
    rating: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict (absent optional fields left out)."""
        return {k: v for k in self.__struct_fields__ if (v := getattr(self, k)) is not None}


# ---- the typed fast path ------------------------------------------------------------------

_Id = Annotated[str, msgspec.Meta(max_length=ID_MAX)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class _Wire(msgspec.Struct, gc=False):
    """The contract as msgspec types (unknown fields are skipped)."""

    event_id: _Id
    user_id: _Id
    ts: str | int | float
    type: _Id
    item_id: _Id
    category: Annotated[str, msgspec.Meta(max_length=CATEGORY_MAX)] | None = None
    title: Annotated[str, msgspec.Meta(max_length=TITLE_MAX)] | None = None
    price: _NonNegative | None = None
    quantity: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] | None = None
    dwell_s: _NonNegative | None = None
    rating: float | None = None


_DECODER = msgspec.json.Decoder(_Wire)
# Keys spelled with lowercase letters and "_", followed by their colon: every contract field
# written plainly, so unique matches prove no field is repeated (repeats, look-alikes inside
# strings and keys that use \u00XX escapes, the only other spelling of such a name, go to
# the exact check).
_KEY = re.compile(rb'"([a-z_]+)"\s*:')
_ESCAPED_KEY = re.compile(rb'"[a-z_]*\\u00[0-9a-fA-F]{2}(?:[a-z_]|\\u00[0-9a-fA-F]{2})*"\s*:')
# Every key of an object, at any depth (a quoted string followed by a colon is a key).
_ANY_KEY = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:')
# Characters an identifier may not hold: C0/C1 controls, DEL, line/paragraph separators
# and lone surrogates (the last only reach here through the stdlib decoder or a file).
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_event(
    raw: bytes | str, allowed_types: Collection[str], max_bytes: int = 64 * 1024
) -> Event:
    """Validate one record's value and return it as an ``Event``.

    Unknown fields are ignored; ``null`` optional fields count as absent.
    """
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"record is {len(raw)} bytes, limit {max_bytes}")
    try:
        wire = _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeError):
        return explain(raw, allowed_types)
    if _may_repeat_fields(raw):
        _check_repeats(_decode_exactly(_text(raw))[1])
    return Event(
        event_id=_identifier(wire.event_id, "event_id"),
        user_id=_user_id(wire.user_id),
        ts_ms=parse_ts(wire.ts),
        type=_event_type(wire.type, allowed_types),
        item_id=_identifier(wire.item_id, "item_id"),
        category=_text_field(wire.category, "category"),
        title=_text_field(wire.title, "title"),
        price=wire.price,
        quantity=wire.quantity,
        dwell_s=wire.dwell_s,
        rating=wire.rating,
    )


def _may_repeat_fields(raw: bytes | str) -> bool:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if b"\\u00" in data and _ESCAPED_KEY.search(data):
        return True  # a key spelled with an escape: rare enough to check exactly
    keys = _KEY.findall(data)
    return len(set(keys)) != len(keys)


# ---- the explaining path (also the reference for the fast one) ----------------------------

def explain(raw: bytes | str, allowed_types: Collection[str]) -> Event:
    """The reason a record is refused, from the stdlib decoder and field-by-field checks.

    Gives the same result as ``parse_event`` for every input (past the size check);
    ``parse_event`` calls it only for records msgspec refuses.
    """
    obj, pairs = _decode_exactly(_text(raw))
    _check_repeats(pairs)
    return event_from_dict(obj, allowed_types)


def _text(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None


def _reject_constant(name: str) -> float:
    raise InvalidEvent("bad_value", f"{name} is not a finite number")


def _parse_int(text: str) -> int:
    # Beyond every range the contract accepts; also beyond Python's int-string limit.
    if len(text.lstrip("-")) > 400:
        return -(10**400) if text.startswith("-") else 10**400
    return int(text)


def _decode_exactly(text: str) -> tuple[Any, list[tuple[str, Any]] | None]:
    """JSON text -> (value, the top-level object's key/value pairs in order, or None)."""
    objects: list[list[tuple[str, Any]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(pairs)  # innermost first: the top-level object comes last
        return dict(pairs)

    try:
        obj = json.loads(text, object_pairs_hook=pairs_hook, parse_int=_parse_int,
                         parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidEvent("not_json", f"not JSON: {exc}") from None
    except RecursionError:
        raise InvalidEvent("too_deep", "JSON nested too deeply") from None
    return obj, objects[-1] if isinstance(obj, dict) else None


def _check_repeats(pairs: list[tuple[str, Any]] | None,
                   names: Collection[str] | None = FIELDS) -> None:
    """Refuse a key of ``names`` (None: any key) given twice in the top-level object."""
    seen: set[str] = set()
    for key, _ in pairs or ():
        if key in seen and (names is None or key in names):
            raise InvalidEvent("duplicate_key", f"{key[:40]} appears more than once")
        seen.add(key)


def decode_object(raw: bytes) -> dict[str, Any]:
    """One JSON object (e.g. a line of a file) under the record rules: UTF-8, no
    NaN/Infinity, no key given twice at the top level, nesting within the decoder's limit.

    Raises ``InvalidEvent`` with the reason (``not_object`` for other JSON values).
    """
    try:
        obj = msgspec.json.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeError):
        obj, pairs = _decode_exactly(_text(raw))
        _check_repeats(pairs, None)
    else:
        keys = _ANY_KEY.findall(raw)
        if len(set(keys)) != len(keys) or b"\\" in raw:
            _check_repeats(_decode_exactly(_text(raw))[1], None)
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object", f"JSON {type(obj).__name__} instead of an object")
    return obj


def event_from_dict(obj: Any, allowed_types: Collection[str]) -> Event:
    """Validate an already-decoded record (e.g. a row of a file) and return an ``Event``."""
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object", f"JSON {type(obj).__name__} instead of an object")
    event_id = _identifier(_string(obj, "event_id", ID_MAX), "event_id")
    user_id = _user_id(_string(obj, "user_id", ID_MAX))
    ts_ms = parse_ts(obj.get("ts"))
    event_type = _event_type(_string(obj, "type", ID_MAX), allowed_types)
    item_id = _identifier(_string(obj, "item_id", ID_MAX), "item_id")
    return Event(
        event_id=event_id,
        user_id=user_id,
        ts_ms=ts_ms,
        type=event_type,
        item_id=item_id,
        category=_text_field(_string(obj, "category", CATEGORY_MAX, False), "category"),
        title=_text_field(_string(obj, "title", TITLE_MAX, False), "title"),
        price=_number(obj, "price", 0.0),
        quantity=_quantity(obj),
        dwell_s=_number(obj, "dwell_s", 0.0),
        rating=_number(obj, "rating", None),
    )


def _string(obj: dict[str, Any], field: str, limit: int, required: bool = True) -> Any:
    """The field's type and length checked; None when absent (required: refused)."""
    value = obj.get(field)
    if value is None:
        if required:
            raise InvalidEvent("missing_field", f"{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"{field} must be a string")
    if len(value) > limit:
        raise InvalidEvent("too_long", f"{field} is longer than {limit} characters")
    return value


def _float(value: Any, field: str) -> float:
    try:
        return float(value)
    except OverflowError:
        raise InvalidEvent("bad_value", f"{field} is out of range") from None


def _number(obj: dict[str, Any], field: str, minimum: float | None) -> float | None:
    value = obj.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent("wrong_type", f"{field} must be a number")
    number = _float(value, field)
    if not math.isfinite(number):
        raise InvalidEvent("bad_value", f"{field} is not a finite number")
    if minimum is not None and number < minimum:
        raise InvalidEvent("bad_value", f"{field} must be >= {minimum:g}")
    return number


def _quantity(obj: dict[str, Any]) -> int | None:
    value = obj.get("quantity")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent("wrong_type", "quantity must be an integer")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidEvent("wrong_type", "quantity must be an integer")
    if value < 1:
        raise InvalidEvent("bad_value", "quantity must be >= 1")
    if value > INT64_MAX:
        raise InvalidEvent("bad_value", "quantity is out of range")
    return int(value)


# ---- rules shared by both paths -----------------------------------------------------------

def _identifier(value: str, field: str) -> str:
    if not value.strip():
        raise InvalidEvent("bad_value", f"{field} is empty")
    if value.isascii() and value.isprintable():
        return value
    bad = _FORBIDDEN.search(value)
    if bad:
        what = "is not valid Unicode" if _SURROGATE.match(bad.group()) else \
            f"contains control character U+{ord(bad.group()):04X}"
        raise InvalidEvent("bad_value", f"{field} {what}")
    return unicodedata.normalize("NFC", value)


def _user_id(value: str) -> str:
    value = _identifier(value, "user_id")
    if "{" in value or "}" in value:
        raise InvalidEvent("bad_value", "user_id contains { or } (reserved for key hash tags)")
    return value


def _text_field(value: str | None, field: str) -> str | None:
    if value is None or not value.strip():
        return None
    if value.isascii():
        return value
    if _SURROGATE.search(value):
        raise InvalidEvent("bad_value", f"{field} is not valid Unicode")
    return unicodedata.normalize("NFC", value)


def _event_type(value: str, allowed_types: Collection[str]) -> str:
    event_type = value.strip().lower()
    if not event_type:
        raise InvalidEvent("bad_value", "type is empty")
    if event_type not in allowed_types:
        raise InvalidEvent("unknown_type", f"type {event_type[:40]!r} is not configured")
    return event_type


def parse_ts(value: Any) -> int:
    """Epoch milliseconds from an ISO-8601 string with zone, or from epoch milliseconds."""
    if value is None:
        raise InvalidEvent("missing_field", "ts is required")
    if isinstance(value, bool):
        raise InvalidEvent("wrong_type", "ts must be an ISO-8601 string or epoch milliseconds")
    if isinstance(value, int):
        ms = value  # any size: compared below, never converted to float
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEvent("bad_timestamp", "ts is not finite")
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00", 1) if text.endswith("Z")
                                            else text)
        except ValueError:
            raise InvalidEvent("bad_timestamp", f"ts is not ISO-8601: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise InvalidEvent("bad_timestamp", "ts has no time zone")
        ms = int(parsed.timestamp() * 1000)
    else:
        raise InvalidEvent("wrong_type", "ts must be an ISO-8601 string or epoch milliseconds")
    if not TS_MIN_MS <= ms < TS_MAX_MS:
        raise InvalidEvent("bad_timestamp", "ts is outside 1990..2100")
    return ms


def ts_to_iso(ts_ms: int) -> str:
    """ISO-8601 UTC text for epoch milliseconds."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
