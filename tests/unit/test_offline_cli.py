"""`segstream fit` and `segstream eval` end to end on a small generated file."""

from __future__ import annotations

import json
import os
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
    done = run("fit", str(events_file), *MAP, "--k", "4", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # --json: JSON on stdout and nothing else
    assert summary["k"] == 4 and summary["users"] == 48
    assert sum(s["size"] for s in summary["segments"]) == 48
    rows = [json.loads(line) for line in (out / "segments.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and len({r["user_id"] for r in rows}) == 48
    catalog = json.loads((out / "catalog.json").read_text())
    assert {r["segment_id"] for r in rows} <= set(catalog)
    for r in rows:
        assert r["tier_path"][-1] == r["segment_id"] and r["feature_text"]
        assert r["memberships"][0]["segment_id"] == r["segment_id"]
    activity = {"views", "purchases", "clicks", "spent", "latest", "events", "add-to-carts"}
    for entry in catalog.values():  # labels name interests, not activity
        assert entry["label"] and not set(entry["label"].split(" / ")) & activity, entry
    page = (out / "report.html").read_text()
    assert page.count("<img") >= 2 and "example feature texts" in page


def test_eval_prints_the_table_and_writes_json(events_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    done = run("eval", str(events_file), *MAP, "--rolling", "2", "--horizon-days", "10",
               "--k", "3,4", "--seeds", "2", "--stability-days", "2,5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    for name in ("global popularity", "interest vector", "feature text", "combination",
                 "RFM + KMeans", "co-occurrence SVD", "category histogram"):
        assert name in done.stdout
    result = json.loads((out / "eval.json").read_text())
    assert "| method | HR@10 |" in (out / "eval.md").read_text()
    assert result["user_split_pairs"] > 0 and set(result["results"]) == {"3", "4"}
    for method in result["results"]["3"].values():
        assert 0.0 <= method["hr"]["mean"] <= 1.0
        assert 0.0 <= method["ndcg"]["mean"] <= method["hr"]["mean"] + 1e-9
        assert len(method["per_seed"]) == 2
    combo = result["results"]["4"]["segstream: combination"]
    assert -1.0 <= combo["stability_2d"]["mean"] <= 1.0
    online = result["results"]["4"]["segstream: interest, online (carried 7 d)"]
    assert -1.0 <= online["stability_2d"]["mean"] <= 1.0  # the row the live segmenter holds
    assert result["chosen"]["half_life_days"] >= 0
    # each row over each reference baseline on the same pairs, inside its bootstrap interval
    ratios = result["ratios_vs_reference"]["4"]
    assert "global popularity" not in ratios
    interest = ratios["segstream: interest vector"]
    assert set(interest) == {"RFM + KMeans", "co-occurrence SVD + KMeans"}
    for ref, by_metric in interest.items():
        hr = result["results"]["4"]["segstream: interest vector"]["hr"]["mean"]
        ref_hr = result["results"]["4"][ref]["hr"]["mean"]
        ratio, low, high = by_metric["hr"]
        if ref_hr > 0:
            assert ratio == pytest.approx(hr / ref_hr) and low <= ratio <= high
    assert ratios["RFM + KMeans"].keys() == {"co-occurrence SVD + KMeans"}
    assert "ratio to each baseline" in (out / "eval.md").read_text()


def test_eval_json_goes_to_stdout_and_tuning_uses_earlier_splits(events_file: Path) -> None:
    done = run("eval", str(events_file), *MAP, "--split-time",
               "2026-11-01,2026-11-10,2026-11-18", "--horizon-days", "6", "--k", "3",
               "--seeds", "1", "--tune-until", "2026-11-10", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert len(result["tuning_splits_ms"]) == 1 and result["tuning"]
    assert min(result["splits_used_ms"]) >= max(result["tuning_splits_ms"]) + 6 * 86_400_000
    best = {}
    smoothed = "segstream: interest + co-occurrence"
    hybrid = "segstream: interest ⊕ item co-occurrence factors"
    for method in ("segstream: interest vector", "segstream: combination", smoothed, hybrid):
        rows = [r for r in result["tuning"] if r["method"] == method
                and not r.get("dims") and not r.get("carry_days")]  # probes are not chosen
        best[method] = max(rows, key=lambda r: r["ndcg"])  # the first of equals, as chosen
    assert result["chosen"]["half_life_days"] == \
        best["segstream: interest vector"]["half_life_days"]
    assert result["chosen"]["text_weight"] == best["segstream: combination"]["text_weight"]
    assert result["chosen"]["cooc_weight"] == best[smoothed]["cooc_weight"]
    assert result["chosen"]["hybrid_weight"] == best[hybrid]["hybrid_weight"]
    assert result["chosen"]["hybrid_scaled"] == best[hybrid]["hybrid_scaled"]
    assert {r["hybrid_scaled"] for r in result["tuning"] if r["method"] == hybrid} == {False,
                                                                                       True}
    assert 0.0 in {r.get("text_weight") for r in result["tuning"]}  # interest alone competes
    probes = [r for r in result["tuning"] if r.get("carry_days")]
    assert probes and all("stability_7d" in per_k for r in probes for per_k in r["per_k"].values())
    # the carried view is also probed with other segmenter settings (never chosen)
    assert {0.0, 0.1} <= {r["refit_min_gain"] for r in probes}
    assert {0.0, 0.2} <= {r["hysteresis_margin"] for r in probes}
    assert any(r.get("carry_passes") == 3 for r in probes)
    # the hybrid view carried with the fit's item factors and with factors refreshed at T
    assert {bool(r.get("refresh_factors")) for r in probes if r["method"] == hybrid} == {
        False, True}
    # whether to build an item-factor table: the two refitted bests, said in one line
    advice, interest = result["item_factors_advice"], best["segstream: interest vector"]
    assert advice["interest_ndcg"] == interest["ndcg"]
    assert advice["factors_ndcg"] == best[hybrid]["ndcg"]
    assert advice["build"] == (best[hybrid]["ndcg"] > interest["ndcg"])
    assert advice["weight"] == best[hybrid]["hybrid_weight"]
    line = [x for x in done.stderr.splitlines() if x.startswith("item factors:")]
    assert len(line) == 1 and ("factors build" in line[0]) == advice["build"], done.stderr


def test_eval_reports_only_the_asked_methods_with_the_segmenter_settings(
        events_file: Path) -> None:
    env = os.environ | {"SEGSTREAM_SEGMENTER__HYSTERESIS_MARGIN": "0.3",
                        "SEGSTREAM_SEGMENTER__REFIT_MIN_GAIN": "0.05"}
    done = subprocess.run([*CLI, "eval", str(events_file), *MAP, "--rolling", "2",
                           "--horizon-days", "10", "--k", "3", "--seeds", "1",
                           "--methods", "rfm,online", "--json"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["results"]["3"]) == {"RFM + KMeans",
                                           "segstream: interest, online (carried 7 d)"}
    # the online row is carried with the segmenter's settings, not the dataclass defaults
    assert result["chosen"]["hysteresis_margin"] == 0.3
    assert result["chosen"]["refit_min_gain"] == 0.05


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("fit", "/nonexistent/events.csv"), "no such file"),
        (("eval", "EVENTS", "--split-time", "next tuesday"), "--split-time"),
        (("fit", "EVENTS", "--map", "user_id"), "--map"),
        (("fit", "EVENTS", "--items", "/nonexistent/items.csv"), "--items"),
        (("fit", "EVENTS", "--windows", "30"), "--windows"),
        (("eval", "EVENTS", "--rolling", "2", "--k", "8,x"), "--k"),
        (("eval", "EVENTS", "--rolling", "2", "--model", "/nonexistent"), "--model"),
        (("eval", "EVENTS", "--rolling", "2", "--methods", "rfm,magic"), "--methods"),
    ],
)
def test_bad_input_is_one_line(events_file: Path, args: tuple[str, ...], fragment: str) -> None:
    done = run(*(str(events_file) if a == "EVENTS" else a for a in args))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr
