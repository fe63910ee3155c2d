"""The input event contract (docs/contracts.md) and its validation.

``parse_event(raw, allowed_types)`` turns the bytes of one Kafka record into an ``Event``
or raises ``InvalidEvent`` with a reason from ``REASONS`` (a small fixed set, usable as a
metric label) and a human-readable detail naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from segstream.errors import InvalidEvent

REASONS = (
    "too_large",        # record bigger than the configured limit
    "not_utf8",         # bytes that are not UTF-8
    "not_json",         # text that is not JSON
    "not_object",       # JSON that is not an object
    "missing_field",    # a required field is absent or null
    "wrong_type",       # a field has the wrong JSON type
    "too_long",         # a string longer than its limit
    "bad_value",        # a number out of range, NaN/Infinity, empty string
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


@dataclass(frozen=True, slots=True)
class Event:
    """A validated behaviour event. ``ts_ms`` is epoch milliseconds, UTC."""

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
        return {k: v for k, v in asdict(self).items() if v is not None}


def _reject_constant(name: str) -> float:
    raise InvalidEvent("bad_value", f"{name} is not a finite number")


def _string(obj: dict[str, Any], field: str, limit: int, required: bool) -> str | None:
    value = obj.get(field)
    if value is None:
        if required:
            raise InvalidEvent("missing_field", f"{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"{field} must be a string")
    if len(value) > limit:
        raise InvalidEvent("too_long", f"{field} is longer than {limit} characters")
    if not value.strip():
        if required:
            raise InvalidEvent("bad_value", f"{field} is empty")
        return None
    return value


def _number(obj: dict[str, Any], field: str, minimum: float | None) -> float | None:
    value = obj.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent("wrong_type", f"{field} must be a number")
    if not math.isfinite(value):
        raise InvalidEvent("bad_value", f"{field} is not a finite number")
    if minimum is not None and value < minimum:
        raise InvalidEvent("bad_value", f"{field} must be >= {minimum:g}")
    return float(value)


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
    return int(value)


def parse_ts(value: Any) -> int:
    """Epoch milliseconds from an ISO-8601 string with zone, or from epoch milliseconds."""
    if value is None:
        raise InvalidEvent("missing_field", "ts is required")
    if isinstance(value, bool):
        raise InvalidEvent("wrong_type", "ts must be an ISO-8601 string or epoch milliseconds")
    if isinstance(value, int | float):
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


def parse_event(
    raw: bytes | str, allowed_types: Collection[str], max_bytes: int = 64 * 1024
) -> Event:
    """Validate one record's value and return it as an ``Event``.

    Unknown fields are ignored; ``null`` optional fields count as absent.
    """
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"record is {len(raw)} bytes, limit {max_bytes}")
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    else:
        text = raw
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except InvalidEvent:
        raise
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidEvent("not_json", f"not JSON: {exc}") from None
    return event_from_dict(obj, allowed_types)


def event_from_dict(obj: Any, allowed_types: Collection[str]) -> Event:
    """Validate an already-decoded record (e.g. a row of a file) and return an ``Event``."""
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object", f"JSON {type(obj).__name__} instead of an object")

    event_id = _string(obj, "event_id", ID_MAX, required=True)
    user_id = _string(obj, "user_id", ID_MAX, required=True)
    ts_ms = parse_ts(obj.get("ts"))
    event_type = _string(obj, "type", ID_MAX, required=True)
    assert event_type is not None  # required=True guarantees it; narrows the type
    event_type = event_type.strip().lower()
    if event_type not in allowed_types:
        raise InvalidEvent("unknown_type", f"type {event_type[:40]!r} is not configured")
    item_id = _string(obj, "item_id", ID_MAX, required=True)
    return Event(
        event_id=event_id,  # type: ignore[arg-type]
        user_id=user_id,  # type: ignore[arg-type]
        ts_ms=ts_ms,
        type=event_type,
        item_id=item_id,  # type: ignore[arg-type]
        category=_string(obj, "category", CATEGORY_MAX, required=False),
        title=_string(obj, "title", TITLE_MAX, required=False),
        price=_number(obj, "price", 0.0),
        quantity=_quantity(obj),
        dwell_s=_number(obj, "dwell_s", 0.0),
        rating=_number(obj, "rating", None),
    )


def ts_to_iso(ts_ms: int) -> str:
    """ISO-8601 UTC text for epoch milliseconds."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
