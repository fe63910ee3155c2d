"""Hostile-input soak on the real broker and Redis: ingest never dies on data, and every
record is accounted for exactly once (applied, cleaned, dead-lettered or duplicate)."""

from __future__ import annotations

import gzip
import json
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from segstream.config import Settings
from segstream.events import REASONS
from segstream.kafka_client import kafka_clients
from segstream.sources import Mapping, ReadReport, read_events
from segstream.synthetic import MALFORMED, SyntheticStream
from segstream_services.ingest.service import IngestService
from tests.helpers import create_event_topics, wait_until
from tests.integration.test_ingest import assert_exact, ingest_settings, produce, recount

pytestmark = pytest.mark.integration
LIMIT = 64 * 1024  # the default max_record_bytes


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _with(event: dict[str, Any], **literals: str) -> bytes:
    """The event with fields whose JSON text is given verbatim (numbers json can't write)."""
    rest = {k: v for k, v in event.items() if k not in literals}
    return _json(rest)[:-1] + "".join(f', "{k}": {v}' for k, v in literals.items()).encode() \
        + b"}"


def _repeat(event: dict[str, Any], key: str, value: Any) -> bytes:
    return _json(event)[:-1] + f', "{key}": {json.dumps(value)}}}'.encode()


def _padded(event: dict[str, Any], size: int) -> bytes:
    """The event with an unknown field that makes it exactly ``size`` bytes."""
    return _json({**event, "pad": "x" * (size - len(_json({**event, "pad": ""})))})


HOSTILE: dict[str, tuple[Callable[[dict[str, Any]], bytes | None], str]] = {
    **MALFORMED,  # the 34 kinds the synthetic stream knows
    "ts-400-digits": (lambda e: _with(e, ts="9" * 400), "bad_timestamp"),
    "ts-5000-digits": (lambda e: _with(e, ts="9" * 5000), "bad_timestamp"),
    "ts-minus-400-digits": (lambda e: _with(e, ts="-" + "9" * 400), "bad_timestamp"),
    "quantity-5000-digits": (lambda e: _with(e, quantity="9" * 5000), "bad_value"),
    "quantity-beyond-int64": (lambda e: _with(e, quantity=str(2**63)), "bad_value"),
    "price-5000-digits": (lambda e: _with(e, price="9" * 5000), "bad_value"),
    "price-400-digits": (lambda e: _with(e, price="9" * 400), "bad_value"),
    "price-1e400": (lambda e: _with(e, price="1e400"), "bad_value"),
    "ts-infinity": (lambda e: _with(e, ts="Infinity"), "bad_value"),
    "rating-nan": (lambda e: _with(e, rating="NaN"), "bad_value"),
    "nested-10000-in-field": (lambda e: _with(e, x="[" * 10_000 + "]" * 10_000), "too_deep"),
    "nested-10000-objects": (lambda e: b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "too_deep"),
    "duplicate-user-id": (lambda e: _repeat(e, "user_id", "someone-else"), "duplicate_key"),
    "duplicate-ts": (lambda e: _repeat(e, "ts", e["ts"] - 1000), "duplicate_key"),
    "duplicate-escaped-key": (lambda e: _json(e)[:-1] + b', "item\\u005fid": "x"}',
                              "duplicate_key"),
    "user-id-brace-first": (lambda e: _json({**e, "user_id": "}" + e["user_id"]}), "bad_value"),
    "user-id-hash-tag": (lambda e: _json({**e, "user_id": "{a}" + e["user_id"]}), "bad_value"),
    "user-id-bell": (lambda e: _json({**e, "user_id": e["user_id"] + "\a"}), "bad_value"),
    "item-id-newline": (lambda e: _json({**e, "item_id": "a\nb"}), "bad_value"),
    "lone-surrogate-title": (lambda e: _json({**e, "title": "x\udc00"}), "bad_value"),
    "utf8-encoded-surrogate": (lambda e: _json(e).replace(b'"type"', b'"\xed\xa0\x80"'),
                               "not_utf8"),
    "one-byte-over-the-limit": (lambda e: _padded(e, LIMIT + 1), "too_large"),
    "json-true": (lambda e: b"true", "not_object"),
    "json-string": (lambda e: b'"an event"', "not_object"),
    "bom-prefixed": (lambda e: b"\xef\xbb\xbf" + _json(e), "not_json"),
    "trailing-garbage": (lambda e: _json(e) + b"]", "not_json"),
}


def twin_events(now: int) -> list[dict[str, Any]]:
    """Users whose ids arrive in NFC and NFD spellings, alternating."""
    events = []
    for u, name in enumerate(["Zoë", "José", "Ångström", "Müller"]):
        for n in range(6):
            events.append({"event_id": f"twin-{u}-{n}", "user_id": f"{name}-{u}",
                           "ts": now - 3 * 86_400_000 + u * 60_000 + n * 61_000,
                           "type": "purchase" if n % 3 == 0 else "view", "item_id": f"i{n}",
                           "category": "books/fiction", "title": f"Novel {n}",
                           "price": 9.5, "quantity": 1})
    return events


def write_file(path: Path, now: int) -> None:
    """A gzip CSV export: 20 good rows and 4 rows that cannot become events."""
    lines = [b"user_id,ts,type,item_id,category,title,price,quantity"]
    for n in range(20):
        lines.append(f"file-{n % 4},{now - 2 * 86_400_000 + n * 90_000},purchase,sku{n % 3},"
                     f"home/lighting,Lamp {n % 3},{4.5 + n},{1 + n % 2}".encode())
    lines += [b"file-1,\xff\xfe,purchase,sku1,home,Lamp,1,1",
              b"file-1," + b"9" * 400 + b",purchase,sku1,home,Lamp,1,1",
              b"file-1,1700000000000,purchase,sku1,home,Lamp,1," + b"9" * 5000,
              b'file-1,1700000000000,purchase,sku1,home,"' + b"x" * 200_000 + b'",1,1']
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")


def counter_total(service: IngestService, name: str) -> float:
    """The sum of a counter over all its label values."""
    for family in service.metrics.service.registry.collect():
        if family.name == f"segstream_{name}":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError(f"no metric {name}")


def test_hostile_soak_every_record_accounted_for_once(infra: Settings, unique: str,
                                                     tmp_path: Path) -> None:
    assert len(HOSTILE) >= 40
    settings = ingest_settings(infra, unique, max_age_days=400)
    assert settings.events.max_record_bytes == LIMIT
    create_event_topics(settings, 3)
    now = int(time.time() * 1000)

    stream = SyntheticStream(users=40, days=6, seed=5, end_ms=now - 60_000)
    valid = list(stream.events())
    applied: list[dict[str, Any]] = list(valid)
    records: list[tuple[bytes, bytes | None]] = []
    expected_letters: Counter[str] = Counter()
    duplicates = 0

    def send(event: dict[str, Any], value: bytes | None = None) -> None:
        records.append((event["user_id"].encode(), value if value is not None else
                        _json(event)))

    kinds = list(HOSTILE.items())
    for n, event in enumerate(valid):
        send(event)
        if n % 3 == 0:  # a hostile record of the next kind: over three rounds of all kinds
            _, (make, reason) = kinds[(n // 3) % len(kinds)]
            records.append((event["user_id"].encode(), make(event)))
            expected_letters[reason] += 1
        if n % 11 == 0:  # the same event again
            send(event)
            duplicates += 1
    assert sum(expected_letters.values()) >= 3 * len(HOSTILE)

    for n, event in enumerate(twin_events(now)):  # NFC/NFD twins, one user each
        spelled = unicodedata.normalize("NFD" if n % 2 else "NFC", event["user_id"])
        send(event, _json({**event, "user_id": spelled}))
        applied.append(event)
    twin = twin_events(now)[0]  # its event id in another spelling is the same event
    send(twin, _json({**twin, "event_id": unicodedata.normalize("NFD", "twin-ë")}))
    send(twin, _json({**twin, "event_id": unicodedata.normalize("NFC", "twin-ë")}))
    applied.append({**twin, "event_id": "twin-ë"})
    duplicates += 1

    extra = {**valid[0], "event_id": "at-limit", "ts": valid[0]["ts"] + 1}
    send(extra, _padded(extra, LIMIT))  # exactly at the limit: valid
    repeated_unknown = {**valid[1], "event_id": "repeats-unknown", "ts": valid[1]["ts"] + 1}
    send(repeated_unknown, _repeat(repeated_unknown, "unknown", 2))
    applied += [extra, repeated_unknown]
    cleaned = [{**valid[2], "event_id": "absurd", "type": "purchase", "price": 5e7,
                "quantity": 1}, {**valid[3], "event_id": "future", "ts": now + 86_400_000}]
    for event in cleaned:
        send(event)

    export = tmp_path / "export.csv.gz"
    write_file(export, now)
    report = ReadReport()
    rows = read_events(export, Mapping(), report=report)
    assert report.rows == 24 and len(rows) == 20 and sum(report.skipped.values()) == 4
    for _ in range(2):  # the same file replayed twice: the second pass is all duplicates
        for event in read_events(export, Mapping()):
            send(event)
    applied += rows
    duplicates += len(rows)

    produce(settings, records)
    service = IngestService(settings)
    text = service.metrics.service.exposition().decode()
    for reason in REASONS:  # every reason is a series from the start, at zero
        assert f'segstream_ingest_records_dead_lettered_total{{reason="{reason}"}} 0.0' in text
    stats = service.run(idle_exit_s=3)  # returning at all: it never died on a record

    total = len(records)
    consumed = counter_total(service, "ingest_records_consumed")
    parts = {name: counter_total(service, f"ingest_{name}") for name in
             ("events_applied", "records_cleaned", "records_dead_lettered",
              "records_duplicate")}
    assert stats.records == consumed == total
    assert consumed == sum(parts.values())
    assert parts == {"events_applied": len(applied), "records_cleaned": len(cleaned),
                     "records_dead_lettered": sum(expected_letters.values()),
                     "records_duplicate": duplicates}
    assert stats.outcomes["cleaned:absurd_value"] == stats.outcomes["cleaned:future"] == 1
    for reason, count in expected_letters.items():
        assert stats.outcomes[f"dead_lettered:{reason}"] == count, reason

    letters: Counter[str] = Counter()
    consumer = kafka_clients(settings.kafka).consumer(settings.topics.dlq, group_id=None)
    try:
        def drain() -> bool:
            letters.update(dict(m.headers)["segstream.reason"].decode()
                           for m in consumer.poll(500, 500))
            return sum(letters.values()) >= sum(expected_letters.values())
        wait_until(drain, timeout_s=60, interval_s=0, what="dead letters")
    finally:
        consumer.close()
    assert letters == expected_letters

    for event in applied:
        event["user_id"] = unicodedata.normalize("NFC", event["user_id"])
    assert_exact(settings, recount(sorted(applied, key=lambda e: e["ts"])))
