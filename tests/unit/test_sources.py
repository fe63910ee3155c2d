"""Event files with foreign columns become contract events in event-time order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segstream.config import DEFAULT_EVENT_TYPES
from segstream.errors import ConfigError, DataError
from segstream.events import parse_event
from segstream.sources import Mapping, ReadReport, load_items, parse_pairs, read_events

RETAIL = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850
536366,22633,HAND WARMER UNION JACK,6,12/1/2010 8:28,1.85,17850
536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:20,3.39,13047
536367,84879,ASSORTED COLOUR BIRD ORNAMENT,-2,12/1/2010 8:34,1.69,13047
536367,84879,ASSORTED COLOUR BIRD ORNAMENT,-2,12/1/2010 8:34,1.69,13047
536368,22960,JAM MAKING SET WITH JARS,3,12/1/2010 8:34,4.25,
"""
RETAIL_MAP = Mapping(
    columns=parse_pairs("user_id=CustomerID,ts=InvoiceDate,item_id=StockCode,"
                        "title=Description,price=UnitPrice,quantity=Quantity"),
    constants={"type": "purchase"}, ts_format="%m/%d/%Y %H:%M", timezone="Europe/London")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_online_retail_style_csv(tmp_path: Path) -> None:
    report = ReadReport()
    events = read_events(write(tmp_path, "retail.csv", RETAIL), RETAIL_MAP, report=report)
    assert report.rows == 6 and report.events == 5
    assert report.skipped == {"missing user_id": 1}
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    first = events[0]
    assert first["user_id"] == "13047" and first["item_id"] == "71053"
    assert first["ts"] == 1_291_191_600_000  # 08:20 London = 08:20 UTC in December
    assert first["price"] == 3.39 and first["quantity"] == 6 and first["type"] == "purchase"
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == 5  # identical rows still get distinct ids ...
    again = read_events(tmp_path / "retail.csv", RETAIL_MAP)
    assert [e["event_id"] for e in again] == ids  # ... and the same ones on every read
    parsed = [parse_event(json.dumps(e), DEFAULT_EVENT_TYPES) for e in events[:3]]
    assert parsed[0].title == "WHITE METAL LANTERN"


def test_jsonl_with_numeric_timestamps_in_any_unit(tmp_path: Path) -> None:
    rows = [{"uid": "a", "when": 1_700_000_000, "sku": "x", "kind": "view"},
            {"uid": "b", "when": 1_600_000_000_000, "sku": "y", "kind": "like"},
            {"uid": "c", "when": 1_650_000_000_000_000, "sku": "z", "kind": "play",
             "rating": "4.5"}]
    path = write(tmp_path, "events.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    mapping = Mapping(columns={"user_id": "uid", "ts": "when", "item_id": "sku",
                               "type": "kind"})
    events = read_events(path, mapping)
    assert [e["user_id"] for e in events] == ["b", "c", "a"]
    assert [e["ts"] for e in events] == [1_600_000_000_000, 1_650_000_000_000,
                                        1_700_000_000_000]
    assert events[1]["rating"] == 4.5
    seconds = read_events(path, Mapping(columns=mapping.columns, ts_unit="ms"))
    assert seconds[0]["ts"] == 1_700_000_000  # forced unit, no guessing


def test_iso_timestamps_naive_ones_get_the_configured_zone(tmp_path: Path) -> None:
    text = "user_id,ts,item_id\nu,2026-01-01T10:00:00,i\nu,2026-01-01T10:00:00+02:00,i\n" \
           "u,not a time,i\n"
    events = read_events(write(tmp_path, "e.csv", text),
                         Mapping(timezone="America/New_York"), report=(r := ReadReport()))
    assert [e["ts"] for e in events] == [1_767_254_400_000, 1_767_279_600_000]
    assert r.skipped == {"unreadable ts": 1}
    assert all(e["type"] == "view" for e in events)


def test_item_table_join_movielens_style(tmp_path: Path) -> None:
    ratings = write(tmp_path, "ratings.csv",
                    "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n")
    movies = write(tmp_path, "movies.csv",
                   "movieId,title,genres\n10,GoldenEye (1995),Action|Adventure|Thriller\n")
    items = load_items(movies, Mapping(columns={"item_id": "movieId", "category": "genres"}))
    (event,) = read_events(ratings, Mapping(
        columns={"user_id": "userId", "item_id": "movieId", "ts": "timestamp"},
        constants={"type": "rate"}), items)
    assert event["title"] == "GoldenEye (1995)" and event["category"].startswith("Action|")
    assert event["type"] == "rate" and event["rating"] == 4.0
    assert event["ts"] == 964_982_703_000


def test_odd_values_pass_through_for_validation(tmp_path: Path) -> None:
    text = "user_id,ts,item_id,price,quantity\nu,1700000000000,i,cheap,1.5\n"
    (event,) = read_events(write(tmp_path, "e.csv", text))
    assert event["price"] == "cheap" and event["quantity"] == 1.5


@pytest.mark.parametrize(("call", "message"), [
    (lambda p: read_events(p, Mapping(columns={"user_id": "Nope"})), "no column 'Nope'"),
    (lambda p: Mapping(columns={"colour": "x"}), "unknown event field 'colour'"),
    (lambda p: Mapping(ts_unit="days"), "ts unit"),
    (lambda p: Mapping(timezone="Nowhere/City"), "unknown time zone"),
    (lambda p: parse_pairs("user_id"), "expected FIELD=VALUE"),
    (lambda p: read_events(p.with_suffix(".xlsx")), "no such file"),
])
def test_bad_input_is_a_one_line_config_error(tmp_path: Path, call: object,
                                              message: str) -> None:
    path = write(tmp_path, "e.csv", "user_id,ts,item_id\nu,1700000000000,i\n")
    with pytest.raises(ConfigError, match=message) as caught:
        call(path)  # type: ignore[operator]
    assert "\n" not in str(caught.value)


def test_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported file type"):
        read_events(write(tmp_path, "e.xlsx", "x"))


def test_item_table_with_a_missing_column(tmp_path: Path) -> None:
    movies = write(tmp_path, "movies.csv", "movieId,title\n1,Heat (1995)\n")
    with pytest.raises(ConfigError, match="no column 'genres'"):
        load_items(movies, Mapping(columns={"item_id": "movieId", "category": "genres"}))


def test_parquet_files_read_like_csv(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"CustomerID": ["c1", "c2", "c1"], "StockCode": ["a", "b", "c"],
                      "InvoiceDate": [1_700_000_300, 1_700_000_100, 1_700_000_200],
                      "UnitPrice": [2.5, None, 4.0]})
    path = tmp_path / "retail.parquet"
    pq.write_table(table, path)
    mapping = Mapping(columns={"user_id": "CustomerID", "item_id": "StockCode",
                               "ts": "InvoiceDate", "price": "UnitPrice"},
                      constants={"type": "purchase"})
    events = read_events(path, mapping)
    assert [e["item_id"] for e in events] == ["b", "c", "a"]  # event-time order
    assert events[0]["ts"] == 1_700_000_100_000 and "price" not in events[0]
    assert events[2]["price"] == 2.5 and events[2]["type"] == "purchase"
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_events(broken, mapping)


# ---- gzip, and rows that cannot become events -----------------------------------------------

def test_gzip_files_read_like_plain_ones(tmp_path: Path) -> None:
    import gzip

    plain = read_events(write(tmp_path, "retail.csv", RETAIL), RETAIL_MAP)
    with gzip.open(tmp_path / "retail.csv.gz", "wt", encoding="utf-8") as fh:
        fh.write(RETAIL)
    assert read_events(tmp_path / "retail.csv.gz", RETAIL_MAP) == plain
    tsv = RETAIL.replace(",", "\t")
    with gzip.open(tmp_path / "retail.TSV.GZ", "wt", encoding="utf-8") as fh:
        fh.write(tsv)
    assert read_events(tmp_path / "retail.TSV.GZ", RETAIL_MAP) == plain
    rows = [{"user_id": "u", "ts": 1_700_000_000_000 + i, "item_id": f"i{i}"} for i in range(3)]
    with gzip.open(tmp_path / "e.jsonl.gz", "wb") as fh:
        fh.write(b"\n".join(json.dumps(r).encode() for r in rows))
    assert [e["item_id"] for e in read_events(tmp_path / "e.jsonl.gz")] == ["i0", "i1", "i2"]


def test_gzip_is_decompressed_while_reading_not_first(tmp_path: Path) -> None:
    import gzip
    import tracemalloc

    from segstream.sources import _rows

    path = tmp_path / "big.csv.gz"
    line = "user_id,ts,item_id\n" + "u,1700000000000,item-with-a-longish-name\n" * 1000
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for _ in range(1200):  # ~50 MB once decompressed
            fh.write(line)
    tracemalloc.start()
    try:
        rows = _rows(path)
        first = next(rows)
        _, peak = tracemalloc.get_traced_memory()
        rows.close()
    finally:
        tracemalloc.stop()
    assert first == {"user_id": "u", "ts": "1700000000000", "item_id": "item-with-a-longish-name"}
    assert peak < 2_000_000


def test_broken_gzip_is_a_one_line_data_error(tmp_path: Path) -> None:
    import gzip

    fake = tmp_path / "e.csv.gz"
    fake.write_bytes(b"user_id,ts,item_id\nu,1,i\n")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"user_id": "u", "ts": 1700000000000, "item_id": "i"}\n'
                                  * 5000)[:-200])
    for path in (fake, cut):
        with pytest.raises(DataError, match="not a readable gzip file") as caught:
            read_events(path)
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="unsupported file type"):
        read_events(write(tmp_path, "e.parquet.gz", "x"))


def test_hostile_jsonl_lines_are_counted_skips(tmp_path: Path) -> None:
    ok = b'{"user_id": "u", "ts": 1700000000000, "item_id": "i"}'
    lines = [
        b"\xef\xbb\xbf" + ok,                                       # BOM on the first line
        b'{"user_id": "u", "ts": 1700000000000, "item_id": "i", "user_id": "v"}',
        b'{"user_id": "u", "ts": ' + b"9" * 400 + b', "item_id": "i"}',
        b'{"user_id": "u", "ts": 1700000000000, "item_id": "i", "quantity": ' + b"9" * 5000
        + b"}",
        b'{"user_id": "u", "ts": 1700000000000, "item_id": "i", "price": ' + b"9" * 400 + b"}",
        b'{"user_id": "u", "ts": 1700000000000, "item_id": "i", "price": NaN}',
        b'{"user_id": "u", "ts": 1700000000000, "item_id": "i", "x": ' + b"[" * 10_000
        + b"]" * 10_000 + b"}",
        b'{"user_id": "\xff\xfe", "ts": 1700000000000, "item_id": "i"}',
        b"[1, 2, 3]",
        b"not json at all",
        b'{"user_id": "u", "ts": 1e400, "item_id": "i"}',
        ok,
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = ReadReport()
    events = read_events(path, report=report)
    assert len(events) == 2 and report.rows == len(lines) and report.events == 2
    assert report.skipped == {"duplicate key": 1, "unreadable ts": 2, "quantity out of range": 1,
                              "price out of range": 1, "bad value": 1, "too deep": 1,
                              "not UTF-8": 1, "not object": 1, "not JSON": 1}
    assert sum(report.skipped.values()) == report.rows - report.events


def test_hostile_csv_rows_are_counted_skips(tmp_path: Path) -> None:
    head = b"user_id,ts,item_id,price,quantity\n"
    rows = [b"u,1700000000000,i,1,1",
            b"\xff\xfeu,1700000000000,i,1,1",                      # not UTF-8
            b"u," + b"9" * 400 + b",i,1,1",                        # ts beyond any unit
            b"u,1700000000000,i,1e400,1",                          # price overflows
            b"u,1700000000000,i,1," + b"9" * 5000,                 # quantity beyond int64
            b"u,1700000000000,i,1,1,surplus,fields",               # kept: extra columns
            b'u,1700000000000,i,"' + b"x" * 200_000 + b'",1',      # field over csv's limit
            b"u,1700000000000,i,2,2"]
    path = tmp_path / "hostile.csv"
    path.write_bytes(head + b"\n".join(rows) + b"\n")
    report = ReadReport()
    events = read_events(path, report=report)
    assert report.skipped == {"not UTF-8": 1, "unreadable ts": 1, "price out of range": 1,
                              "quantity out of range": 1, "bad CSV row": 1}
    assert len(events) == 3 and report.rows == len(rows)
    assert len({e["event_id"] for e in events}) == 3
