"""`segstream fit` and `segstream eval` end to end on a small generated file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segstream.synthetic import SyntheticStream

CLI = [sys.executable, "-m", "segstream_services.cli"]


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSONL file in a foreign shape: other column names, epoch seconds, no event ids."""
    path = tmp_path_factory.mktemp("data") / "shop.jsonl"
    stream = SyntheticStream(users=48, days=40, seed=5, activity=0.8)
    with path.open("w") as fh:
        for e in stream.events():
            fh.write(json.dumps({"customer": e["user_id"], "when": e["ts"] // 1000,
                                 "action": e["type"], "sku": e["item_id"],
                                 "category": e.get("category"), "title": e.get("title"),
                                 "price": e.get("price")}) + "\n")
    return path


MAP = ["--map", "user_id=customer,ts=when,type=action,item_id=sku"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


def test_fit_writes_segments_catalog_and_report(events_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "fit"
    done = run("fit", str(events_file), *MAP, "--k", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "segments.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and len({r["user_id"] for r in rows}) == 48
    catalog = json.loads((out / "catalog.json").read_text())
    assert {r["segment_id"] for r in rows} <= set(catalog)
    for r in rows:
        assert r["tier_path"][-1] == r["segment_id"] and r["feature_text"]
        assert r["memberships"][0]["segment_id"] == r["segment_id"]
    page = (out / "report.html").read_text()
    assert page.count("<img") >= 2 and "example feature texts" in page


def test_eval_prints_the_table_and_writes_json(events_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    done = run("eval", str(events_file), *MAP, "--rolling", "2", "--horizon-days", "10",
               "--k", "3", "--seeds", "2", "--json", str(out))
    assert done.returncode == 0, done.stderr
    for name in ("global popularity", "segstream", "RFM + KMeans", "category histogram"):
        assert name in done.stdout
    result = json.loads(out.read_text())
    assert result["user_split_pairs"] > 0
    for method in result["methods"].values():
        assert 0.0 <= method["hr"]["mean"] <= 1.0
        assert 0.0 <= method["ndcg"]["mean"] <= method["hr"]["mean"] + 1e-9
        assert len(method["per_seed"]) == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("fit", "/nonexistent/events.csv"), "no such file"),
        (("eval", "EVENTS", "--split-time", "next tuesday"), "--split-time"),
        (("fit", "EVENTS", "--map", "user_id"), "--map"),
        (("fit", "EVENTS", "--items", "/nonexistent/items.csv"), "--items"),
        (("fit", "EVENTS", "--windows", "30"), "--windows"),
    ],
)
def test_bad_input_is_one_line(events_file: Path, args: tuple[str, ...], fragment: str) -> None:
    done = run(*(str(events_file) if a == "EVENTS" else a for a in args))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr
