"""``segstream items load FILE --map ...``: an item file's texts into Redis for embedding.

Each row's ``title`` and ``category`` (the ``--map`` names their columns, e.g.
``item_id=movieId,title=title,category=genres``) are written to the item's hash
(``Keys.item``; the file's text replaces a text seen in events) and the item is queued
(``Keys.items_dirty``), so the encoder embeds it before users engage with it. An item
already embedded under the serving model keeps its vector: load the file before
streaming events for the catalogue's texts to be the ones embedded.
"""

from __future__ import annotations

import argparse
import time

from segstream.config import Settings
from segstream.errors import ConfigError
from segstream.features import clean_text
from segstream.keys import Keys
from segstream.redis_io import check_redis, hash_fields, redis_client
from segstream.sources import Mapping, load_items, parse_pairs

CHUNK = 1_000
MAX_CHARS = 512


def load(settings: Settings, path: str, mapping: Mapping) -> tuple[int, int]:
    """Write and queue the file's items; returns (items read, items with a text)."""
    items = load_items(path, mapping)
    client = redis_client(settings.redis)
    check_redis(client)
    keys = Keys(settings.redis.key_prefix)
    texts = 0
    ids = list(items)
    for start in range(0, len(ids), CHUNK):
        pipe = client.pipeline(transaction=False)
        queued = {}
        for item_id in ids[start:start + CHUNK]:
            row = items[item_id]
            fields = {name: clean_text(str(row[name]), MAX_CHARS) for name in
                      ("title", "category") if row.get(name) not in (None, "")}
            fields = {k: v for k, v in fields.items() if v}
            if not fields:
                continue
            pipe.hset(keys.item(item_id), mapping=hash_fields(fields))
            queued[item_id] = time.time_ns() // 1_000_000
        if queued:
            pipe.zadd(keys.items_dirty(), queued, nx=True)
            pipe.execute()
        texts += len(queued)
    client.close()
    return len(items), texts


def cmd_items_load(settings: Settings, args: argparse.Namespace) -> int:
    mapping = Mapping(columns=parse_pairs(args.map))
    if not args.file:
        raise ConfigError("items load: FILE is required")
    read, with_text = load(settings, args.file, mapping)
    print(f"{read} items read, {with_text} with a title or category written and queued "
          "for embedding")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``items load`` to the segstream CLI."""
    help_ = "Item texts (title, category) for the encoder's item vectors."
    p = sub.add_parser("items", help=help_, description=help_)
    items_sub = p.add_subparsers(dest="items_command", required=True, metavar="COMMAND")
    help_ = ("Write an item file's titles and categories to Redis and queue the items for "
             "embedding (CSV, TSV, JSONL or Parquet).")
    p = items_sub.add_parser("load", help=help_, description=help_,
                             epilog="example: segstream items load movies.csv --map "
                                    "item_id=movieId,title=title,category=genres")
    p.add_argument("file", metavar="FILE", help="the item file")
    p.add_argument("--map", metavar="FIELD=COLUMN,...",
                   help="item field <- column: item_id, title, category")
    p.set_defaults(func=cmd_items_load)
