"""``segstream export``: a segment's (or every segment's) members as JSONL, CSV or Parquet,
for batch activation (ad audiences, e-mail lists, offline joins).

Streaming: members are read a page at a time from the per-segment member sets (sorted-set
ranges, never a scan of every user) and written as they arrive, so memory stays flat in
the number of users. ``--details`` adds each user's label, confidence, tier path,
engagement tier and assignment time, read with one pipelined round trip per page.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from segstream.client import SegmentClient, check_segment_id
from segstream.config import Settings
from segstream.errors import ConfigError, DataError

BASE = ("segment_id", "user_id")
DETAILS = ("label", "confidence", "tier_path", "engagement_tier", "updated_at")


def segments_to_export(client: SegmentClient, segment: str | None) -> list[str]:
    """The fine segment ids whose members are exported (a family: its segments; ``None``:
    every segment in the catalog, retired ones too while they still have members)."""
    if segment is None:
        return [s.segment_id for s in client.segments(include_retired=True)
                if s.tier == 2 and s.members]
    check_segment_id(segment)
    found = client.segment(segment)
    if found is None:
        raise DataError(f"unknown segment {segment!r} (see segstream segments)")
    return list(found.children) if found.tier == 1 else [segment]


def rows(client: SegmentClient, segment_ids: list[str], details: bool, page: int
         ) -> Iterator[list[dict[str, Any]]]:
    """One list of rows per page of members."""
    for sid in segment_ids:
        cursor = None
        while True:
            got = client.members(sid, cursor, page)
            if got.members:
                batch: list[dict[str, Any]] = [{"segment_id": sid, "user_id": u}
                                               for u in got.members]
                if details:
                    users = client.get_many(got.members)
                    for row in batch:
                        u = users[row["user_id"]]
                        row.update(
                            label=u.label if u else None,
                            confidence=u.confidence if u else None,
                            tier_path="/".join(u.tier_path) if u else None,
                            engagement_tier=u.engagement_tier if u else None,
                            updated_at=u.updated_at.isoformat() if u and u.updated_at
                            else None)
                yield batch
            if got.next_cursor is None:
                break
            cursor = got.next_cursor


def write(batches: Iterator[list[dict[str, Any]]], fmt: str, columns: tuple[str, ...],
          out: IO[str] | Path) -> int:
    """Write row batches in ``fmt`` to a text stream (jsonl, csv) or a file path (parquet);
    returns the number of rows."""
    n = 0
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(c, pa.float64() if c == "confidence" else pa.string())
                            for c in columns])
        assert isinstance(out, Path)
        with pq.ParquetWriter(out, schema) as writer:
            for batch in batches:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                n += len(batch)
        return n
    assert not isinstance(out, Path)
    if fmt == "csv":
        w = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
        w.writeheader()
        for batch in batches:
            w.writerows(batch)
            n += len(batch)
        return n
    for batch in batches:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in batch)
        n += len(batch)
    return n


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    if (args.segment is None) == (not args.all):
        raise ConfigError("give exactly one of --segment ID and --all")
    if args.format == "parquet" and args.out in (None, "-"):
        raise ConfigError("--format parquet needs --out FILE (Parquet is not a stream)")
    columns = BASE + (DETAILS if args.details else ())
    with SegmentClient(settings) as client:
        segment_ids = segments_to_export(client, args.segment)
        batches = rows(client, segment_ids, args.details, args.page)
        if args.format == "parquet":
            n = write(batches, "parquet", columns, Path(args.out))
        elif args.out in (None, "-"):
            n = write(batches, args.format, columns, sys.stdout)
            sys.stdout.flush()
        else:
            with open(args.out, "w", encoding="utf-8", newline="") as fh:
                n = write(batches, args.format, columns, fh)
    where = "stdout" if args.out in (None, "-") else args.out
    print(f"exported {n} members of {len(segment_ids)} segment(s) to {where}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    """Add ``segstream export`` to the parser."""
    help_ = ("Export a segment's members (or every segment's) as JSONL, CSV or Parquet, "
             "streaming from the per-segment member sets.")
    p = sub.add_parser("export", help=help_, description=help_,
                       epilog="example: segstream export --segment s3 --format csv "
                              "--out s3.csv")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--segment", metavar="ID",
                       help="a segment (s<n>) or family (f<n>: all its segments)")
    which.add_argument("--all", action="store_true", help="every segment with members")
    p.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl",
                   help="output format (jsonl)")
    p.add_argument("--out", metavar="FILE", help="output file (default: stdout; parquet "
                   "needs a file)")
    p.add_argument("--details", action="store_true",
                   help="add label, confidence, tier path, engagement tier, updated_at")
    p.add_argument("--page", type=int, default=1_000, metavar="N",
                   help="members read per round trip (1000)")
    p.set_defaults(func=cmd_export)
