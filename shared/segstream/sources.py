"""Event files (CSV, JSONL or Parquet) into contract events, in event-time order.

A ``Mapping`` says which source column feeds each event field
(``user_id=CustomerID,ts=InvoiceDate``; fields not mapped are read from a column of their
own name when there is one), constant values for fields the file lacks
(``type=purchase``), how numeric timestamps are scaled (``auto`` guesses seconds,
milliseconds or microseconds from the magnitude), an optional ``strptime`` format, and
the zone given to timestamps written without one. Files without an event id get a
deterministic one from the row's content (plus its occurrence count), so replaying the
same file twice is deduplicated downstream. An optional item table joins titles and
categories by item id (MovieLens: ``ratings.csv`` + ``movies.csv``).

Files ending in ``.gz`` (``events.csv.gz``, ``events.jsonl.gz``, ``events.tsv.gz``) are
decompressed while they are read, never whole in memory. A row that cannot become an event
(a line that is not JSON or repeats a key, bytes that are not UTF-8, a CSV row the parser
refuses, a timestamp or number beyond any range) is skipped and counted by reason in the
``ReadReport``; only a file that cannot be read at all raises.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from segstream.errors import ConfigError, DataError, InvalidEvent
from segstream.events import INT64_MAX, decode_object
from segstream.features import zone

FIELDS = ("event_id", "user_id", "ts", "type", "item_id", "category", "title", "price",
          "quantity", "dwell_s", "rating")
REQUIRED = ("user_id", "ts", "item_id")
NUMERIC = {"price": float, "quantity": int, "dwell_s": float, "rating": float}


def parse_pairs(text: str | None, what: str = "--map") -> dict[str, str]:
    """``"a=B,c=D"`` -> ``{"a": "B", "c": "D"}``; a one-line ``ConfigError`` when malformed."""
    pairs: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{what}: expected FIELD=VALUE, got {part.strip()!r}")
        pairs[name.strip()] = value.strip()
    return pairs


@dataclass
class Mapping:
    """How a foreign file's columns become event fields."""

    columns: dict[str, str] = field(default_factory=dict)    # event field -> column
    constants: dict[str, str] = field(default_factory=dict)  # event field -> fixed value
    ts_unit: str = "auto"                                    # auto | s | ms | us
    ts_format: str | None = None                             # strptime format
    timezone: str = "UTC"                                    # for naive timestamps

    def __post_init__(self) -> None:
        for name in [*self.columns, *self.constants]:
            if name not in FIELDS:
                raise ConfigError(f"unknown event field {name!r} (fields: {', '.join(FIELDS)})")
        if self.ts_unit not in ("auto", "s", "ms", "us"):
            raise ConfigError(f"ts unit must be auto, s, ms or us, not {self.ts_unit!r}")
        zone(self.timezone)


JSONL = (".jsonl", ".ndjson", ".json")
DELIMITED = (".csv", ".tsv", ".txt")
PARQUET = (".parquet", ".pq")
TS_ABS_MAX = 1e18  # no numeric timestamp in any unit is this large
_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes under surrogateescape


@dataclass(frozen=True)
class Skip:
    """A row that cannot be read, with the reason it is counted under."""

    why: str


def _kind(path: Path) -> tuple[str, bool]:
    """The file's format suffix (inner one for ``.gz``) and whether it is gzip-compressed."""
    suffixes = [x.lower() for x in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes.pop()
    return (suffixes[-1] if suffixes else ""), compressed


def _open(path: Path, compressed: bool, text: bool) -> IO[Any]:
    opener: Any = gzip.open if compressed else open
    if text:
        return opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
    return opener(path, "rb")


def _rows(path: Path) -> Iterator[dict[str, Any] | Skip]:
    """The rows of a file as dicts, or ``Skip`` for each row that cannot be read."""
    suffix, compressed = _kind(path)
    if suffix not in JSONL + DELIMITED + PARQUET or (compressed and suffix in PARQUET):
        raise ConfigError(f"{path.name}: unsupported file type (use .csv, .tsv, .jsonl or "
                          ".parquet; .csv, .tsv and .jsonl may be gzip-compressed, .gz)")
    if suffix in PARQUET:
        yield from _parquet_rows(path)
        return
    try:
        yield from (_json_rows if suffix in JSONL else _delimited_rows)(path, compressed)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path.name}: not a readable gzip file ({exc})") from None


def _json_rows(path: Path, compressed: bool) -> Iterator[dict[str, Any] | Skip]:
    with _open(path, compressed, text=False) as fh:
        for n, line in enumerate(fh, 1):
            if n == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            try:
                yield decode_object(line)
            except InvalidEvent as exc:
                yield Skip(exc.reason.replace("_", " ").replace("json", "JSON")
                           .replace("utf8", "UTF-8"))


def _delimited_rows(path: Path, compressed: bool) -> Iterator[dict[str, Any] | Skip]:
    with _open(path, compressed, text=True) as fh:
        sample = fh.read(8192)
        fh.seek(0)
        try:
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel_tab if path.name.lower().endswith((".tsv", ".tsv.gz")) \
                else csv.excel
        reader = csv.DictReader(fh, dialect=dialect, restkey="(extra fields)")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:  # e.g. a field over the csv module's size limit
                yield Skip("bad CSV row")
                continue
            if any(_SURROGATE.search(v) for v in row.values()
                   if isinstance(v, str) and not v.isascii()):
                yield Skip("not UTF-8")
                continue
            yield row


def _parquet_rows(path: Path) -> Iterator[dict[str, Any] | Skip]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's errors have no common base worth naming
        raise DataError(f"{path.name}: not a readable Parquet file ({exc})") from None
    for batch in table.iter_batches(batch_size=50_000):
        yield from batch.to_pylist()


def to_epoch_ms(value: Any, mapping: Mapping) -> int | None:
    """Epoch milliseconds from a numeric or textual timestamp; None when unreadable."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            return _text_ts(text, mapping)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not abs(value) < TS_ABS_MAX:  # also NaN and infinities; ints of any size compare
        return None
    unit = mapping.ts_unit
    if unit == "auto":
        unit = "s" if abs(value) < 1e11 else "ms" if abs(value) < 1e14 else "us"
    return int(value * {"s": 1000, "ms": 1, "us": 0.001}[unit])


def _text_ts(text: str, mapping: Mapping) -> int | None:
    try:
        if mapping.ts_format:
            parsed = datetime.strptime(text, mapping.ts_format)
        else:
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone(mapping.timezone))
        return int(parsed.timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        return None


def _number(value: Any, kind: type) -> Any:
    """Numbers from text where they parse; anything else unchanged (validation judges it)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return value
    return int(number) if kind is int and number.is_integer() else number


@dataclass
class ReadReport:
    """What ``read_events`` did: rows read, events made, rows skipped and why."""

    rows: int = 0
    events: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def load_items(path: str | Path, mapping: Mapping) -> dict[str, dict[str, Any]]:
    """An item table (item_id -> title/category/price) for joining onto events."""
    items = {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    checked = False
    for row in _rows(path):
        if isinstance(row, Skip):
            continue
        if not checked:
            _check_columns(path, mapping, row)
            checked = True
        item_id = row.get(mapping.columns.get("item_id", "item_id"))
        if item_id in (None, ""):
            continue
        items[str(item_id)] = {
            name: row.get(mapping.columns.get(name, name))
            for name in ("title", "category", "price")
            if row.get(mapping.columns.get(name, name)) not in (None, "")}
    return items


def read_events(path: str | Path, mapping: Mapping | None = None,
                items: dict[str, dict[str, Any]] | None = None,
                report: ReadReport | None = None) -> list[dict[str, Any]]:
    """All events of a CSV/TSV/JSONL (maybe ``.gz``) or Parquet file as contract dicts,
    sorted by event time (stable).

    ``ts`` is epoch milliseconds. Rows that cannot be read, or lack a user, item or readable
    timestamp, or hold a number beyond any range, are skipped and counted by reason in
    ``report``; other odd values are passed on for validation.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    mapping = mapping or Mapping()
    report = report if report is not None else ReadReport()
    seen: dict[str, int] = {}
    events: list[dict[str, Any]] = []
    checked = False
    for row in _rows(path):
        report.rows += 1
        if isinstance(row, Skip):
            _skip(report, row.why)
            continue
        if not checked:
            _check_columns(path, mapping, row)
            checked = True
        event: dict[str, Any] = {}
        for name in FIELDS:
            column = mapping.columns.get(name, name)
            value = row.get(column)
            if value in (None, "") and name in mapping.constants:
                value = mapping.constants[name]
            if value not in (None, ""):
                event[name] = value
        missing_required = [n for n in REQUIRED if n not in event]
        if missing_required:
            _skip(report, f"missing {missing_required[0]}")
            continue
        ts = to_epoch_ms(event["ts"], mapping)
        if ts is None:
            _skip(report, "unreadable ts")
            continue
        event["ts"] = ts
        for name in ("user_id", "item_id", "event_id"):
            if name in event:
                event[name] = str(event[name])
        if items and event["item_id"] in items:
            for name, value in items[event["item_id"]].items():
                event.setdefault(name, value)
        out_of_range = None
        for name, kind in NUMERIC.items():
            if name in event:
                event[name] = _number(event[name], kind)
                if _out_of_range(event[name]):
                    out_of_range = name
        if out_of_range:
            _skip(report, f"{out_of_range} out of range")
            continue
        event.setdefault("type", "view")
        if "event_id" not in event:
            digest = hashlib.blake2b(json.dumps(row, sort_keys=True, default=str).encode(),
                                     digest_size=10).hexdigest()
            seen[digest] = seen.get(digest, 0) + 1
            event["event_id"] = f"{digest}-{seen[digest]}"
        events.append({k: v for k, v in event.items() if v is not None})
    events.sort(key=lambda e: e["ts"])
    report.events = len(events)
    return events


def _check_columns(path: Path, mapping: Mapping, row: dict[str, Any]) -> None:
    missing = [c for c in mapping.columns.values() if c not in row]
    if missing:
        raise ConfigError(f"{path.name}: no column {missing[0]!r} "
                          f"(columns: {', '.join(map(str, row))[:200]})")


def _out_of_range(value: Any) -> bool:
    """A number no event field can hold (NaN, infinite, or an integer beyond int64)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) > INT64_MAX if isinstance(value, int) else not math.isfinite(value)


def _skip(report: ReadReport, why: str) -> None:
    report.skipped[why] = report.skipped.get(why, 0) + 1
