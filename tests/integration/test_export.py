"""``segstream export`` writes exactly the member sets, in every format."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis

from segstream.keys import Keys
from segstream_services.cli import main as cli_main
from segstream_services.segmenter.audience import member_sets
from tests.helpers import delete_prefix
from tests.integration.segment_state import write_state

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(redis_conn: redis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[str]:
    for name in [k for k in os.environ if k.startswith("SEGSTREAM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SEGSTREAM_REDIS__KEY_PREFIX", unique)
    write_state(redis_conn, unique, {"s1": [f"u{i}" for i in range(2_345)],
                                     "s2": ["a,b", 'quote"d', "用户"]})
    yield unique
    delete_prefix(redis_conn, unique)


def _pairs(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(r["segment_id"], r["user_id"]) for r in rows]


def test_export_all_equals_the_member_sets_in_each_format(
        prefix: str, redis_conn: redis.Redis, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    truth = member_sets(redis_conn, Keys(prefix))
    expected = sorted((sid, u) for sid, users in truth.items() for u in users)
    assert len(expected) == 2_348

    assert cli_main(["export", "--all", "--format", "jsonl", "--page", "500"]) == 0
    out, err = capsys.readouterr()
    jsonl = [json.loads(line) for line in out.splitlines()]
    assert "exported 2348 members of 2 segment(s)" in err
    assert sorted(_pairs(jsonl)) == expected and len(jsonl) == len(set(_pairs(jsonl)))

    assert cli_main(["export", "--all", "--format", "csv", "--out",
                     str(tmp_path / "all.csv")]) == 0
    with open(tmp_path / "all.csv", newline="", encoding="utf-8") as fh:
        assert sorted(_pairs(list(csv.DictReader(fh)))) == expected

    assert cli_main(["export", "--all", "--format", "parquet", "--details", "--out",
                     str(tmp_path / "all.parquet")]) == 0
    table = pq.read_table(tmp_path / "all.parquet").to_pylist()
    assert sorted(_pairs(table)) == expected
    assert {r["label"] for r in table} == {"guitars / amps", "espresso / grinders"}
    assert all(r["confidence"] == pytest.approx(0.8) and r["tier_path"].startswith("f1/")
               for r in table)


def test_export_one_segment_or_a_family_and_bad_requests(
        prefix: str, redis_conn: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["export", "--segment", "s2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["user_id"] for r in rows) == sorted(["a,b", 'quote"d', "用户"])

    assert cli_main(["export", "--segment", "f1", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "segment_id,user_id" and len(lines) == 1 + 2_348

    for argv, message in ((["export", "--segment", "s9"], "unknown segment 's9'"),
                          (["export", "--segment", "x"], "invalid segment id"),
                          (["export"], "exactly one of --segment ID and --all"),
                          (["export", "--all", "--format", "parquet"], "needs --out FILE")):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
