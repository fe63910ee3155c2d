"""What schema validation costs per output record (prints figures; not a test).

Builds ``segstream.segments`` change records and ``segstream.catalog`` entries from a
trained ``OnlineSegmenter`` (seeded Gaussian mixture on the unit sphere) and times, in the
same run and interleaved round by round, the record built only (``build_change_record``,
``build_catalog_entries``) against built and validated (``change_record``,
``catalog_entries``: the compiled Draft 2020-12 validator of ``segstream.records``). Named
peers: the pure-Python ``jsonschema`` validator (built once) on the same records, and
``json.dumps``, which every published record pays anyway. Reports the median round:
records/s, µs/record and the validation overhead.

    .venv/bin/python bench/bench_records.py --records 5000 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator

from segstream.records import (
    build_catalog_entries,
    build_change_record,
    catalog_entries,
    change_record,
    load_schema,
    validator,
)
from segstream.segmentation import Assignment, Observation, OnlineSegmenter, SegConfig


def trained(n: int, k: int, dim: int, seed: int) -> tuple[OnlineSegmenter, list[Assignment]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    labels = rng.integers(0, k, size=n)
    X = centres[labels] + 0.3 * rng.normal(size=(n, dim))
    words = ["tents", "espresso", "guitars", "novels", "laptops", "sneakers", "toys"]
    obs = [Observation(f"user-{i}", X[i], f"Mostly {words[labels[i] % len(words)]}. "
                       f"Active on evenings.") for i in range(n)]
    model = OnlineSegmenter(SegConfig(k=k, seed=seed))
    model.model_version = "all-MiniLM-L6-v2@0123456789ab"
    assignments = model.fit(obs, 1_700_000_000_000)
    return model, assignments


def time_round(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=5000, help="change records per round")
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model, assignments = trained(args.records, args.k, args.dim, args.seed)
    diff = {"added": ["Mostly tents."], "removed": ["Mostly novels."]}
    common = (diff, model.model_version or "", model.version, 1_700_000_000_000,
              1_700_000_000_500)
    label = {sid: model.segments[sid].label for sid in model.slot_ids}
    validator("segment_change")  # compile outside the timed rounds (done once per process)
    validator("catalog_entry")

    def built() -> list[dict[str, Any]]:
        return [build_change_record(a, label[a.segment_id], "active", *common)
                for a in assignments]

    def checked() -> list[dict[str, Any]]:
        return [change_record(a, label[a.segment_id], "active", *common) for a in assignments]

    records = built()

    def dumps() -> None:
        for r in records:
            json.dumps(r)

    pure = Draft202012Validator(load_schema("segment_change"))
    sample = records[: max(1, len(records) // 10)]  # ~1 ms a record: a tenth is plenty

    def pure_python() -> None:
        for r in sample:
            assert pure.is_valid(r)

    catalog_n = len(build_catalog_entries(model, 0))
    cat_reps = max(1, args.records // catalog_n)

    def cat_built() -> None:
        for _ in range(cat_reps):
            build_catalog_entries(model, 1_700_000_000_000)

    def cat_checked() -> None:
        for _ in range(cat_reps):
            catalog_entries(model, 1_700_000_000_000)

    runs: dict[str, list[float]] = {n: [] for n in
                                    ("built", "checked", "dumps", "pure", "cat_built",
                                     "cat_checked")}
    for _ in range(args.rounds):  # interleaved, so machine load hits every variant alike
        runs["built"].append(time_round(built))
        runs["checked"].append(time_round(checked))
        runs["dumps"].append(time_round(dumps))
        runs["pure"].append(time_round(pure_python))
        runs["cat_built"].append(time_round(cat_built))
        runs["cat_checked"].append(time_round(cat_checked))
    med = {n: statistics.median(v) for n, v in runs.items()}
    n = len(assignments)
    ncat = catalog_n * cat_reps

    def line(name: str, seconds: float, count: int) -> str:
        return (f"  {name:<34} {count / seconds:>10,.0f} records/s "
                f"{seconds / count * 1e6:>8.1f} µs/record")

    print(f"{n:,} change records, {catalog_n} catalog entries x {cat_reps} (k={args.k}, "
          f"dim={args.dim}), median of {args.rounds} interleaved rounds")
    print("segstream.segments change records:")
    print(line("built only", med["built"], n))
    print(line("built + validated", med["checked"], n))
    print(line("json.dumps (peer)", med["dumps"], n))
    print(line("jsonschema validate only (peer)", med["pure"], len(sample)))
    over = (med["checked"] - med["built"]) / n * 1e6
    pure_us = med["pure"] / len(sample) * 1e6
    print(f"  validation: +{over:.1f} µs/record, {med['checked'] / med['built']:.2f}x built "
          f"only, {over / (med['dumps'] / n * 1e6):.2f}x json.dumps; pure-Python jsonschema "
          f"{pure_us:.0f} µs/record ({pure_us / max(over, 1e-9):.0f}x this overhead)")
    print("segstream.catalog entries:")
    print(line("built only", med["cat_built"], ncat))
    print(line("built + validated", med["cat_checked"], ncat))
    cover = (med["cat_checked"] - med["cat_built"]) / ncat * 1e6
    print(f"  validation: +{cover:.1f} µs/entry, "
          f"{med['cat_checked'] / med['cat_built']:.2f}x built only")


if __name__ == "__main__":
    main()
