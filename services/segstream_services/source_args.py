"""The command-line options that say how to read a foreign event file, in one place.

`segstream replay`, `fit`, `eval`, `finetune` and `demo --file` all take the same column
mapping (``--map user_id=CustomerID,ts=InvoiceDate``), constants, item-table join and
timestamp options, and read the file through ``read_mapped``.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segstream.errors import ConfigError
from segstream.sources import Mapping, ReadReport, load_items, parse_pairs, read_events


def add_source_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    """Add FILE (or ``--file``) and the mapping options to ``p``."""
    if positional:
        p.add_argument("file", metavar="FILE", help="events as CSV, TSV, JSONL or Parquet")
    else:
        p.add_argument("--file", metavar="FILE",
                       help="stream this event file (CSV, TSV or JSONL) instead")
    p.add_argument("--map", metavar="FIELD=COLUMN,...",
                   help="event field <- file column, e.g. user_id=CustomerID,ts=InvoiceDate")
    p.add_argument("--set", metavar="FIELD=VALUE,...",
                   help="constant values for fields the file lacks, e.g. type=purchase")
    p.add_argument("--items", metavar="FILE", help="item table joined on item_id (titles, "
                   "categories, prices), e.g. MovieLens movies.csv")
    p.add_argument("--items-map", metavar="FIELD=COLUMN,...",
                   help="item field <- item-table column, e.g. item_id=movieId,category=genres")
    p.add_argument("--ts-unit", default="auto", choices=("auto", "s", "ms", "us"),
                   help="unit of numeric timestamps (auto: guessed from magnitude)")
    p.add_argument("--ts-format", metavar="STRPTIME", help="format of textual timestamps")
    p.add_argument("--tz", default="UTC", help="zone of timestamps written without one")


def read_mapped(args: argparse.Namespace, progress: bool = False
                ) -> tuple[list[dict[str, Any]], ReadReport]:
    """The file's rows as contract dicts (mapped, joined, in event-time order).

    ``progress``: show rows read on stderr (when it is a terminal) while the file is read
    and sorted.
    """
    mapping = Mapping(columns=parse_pairs(args.map), constants=parse_pairs(args.set, "--set"),
                      ts_unit=args.ts_unit, ts_format=args.ts_format, timezone=args.tz)
    items = None
    if args.items:
        if not Path(args.items).is_file():
            raise ConfigError(f"--items: no such file: {args.items}")
        items = load_items(args.items, Mapping(columns=parse_pairs(args.items_map,
                                                                   "--items-map")))
    report = ReadReport()
    if not progress:
        return read_events(args.file, mapping, items, report), report
    with _rows_read(report, f"reading {Path(args.file).name}"):
        return read_events(args.file, mapping, items, report), report


@contextmanager
def _rows_read(report: ReadReport, label: str) -> Iterator[None]:
    """A progress line on stderr that follows ``report.rows`` until the block ends."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(label), BarColumn(), TextColumn("{task.completed:,} rows"),
               TimeElapsedColumn())
    done = threading.Event()
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(label, total=None)

        def follow() -> None:
            while not done.wait(0.2):
                bar.update(task, completed=report.rows)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()
