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
