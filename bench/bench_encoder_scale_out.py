"""Encoder scale-out benchmark (prints figures; not a test): users/s of 1, 2 and 4
``segstream run encoder`` processes sharing one Redis namespace.

Each fleet size gets its own key prefix, seeded the same way as ingest leaves users:
``--users`` users, each with a feature text (the persona renderer's texts), an interest
state over a few of ``--items`` titled items, and a dirty mark. The workers embed the
items, claim the users (interest view, no transformer pass), then embed every user's
feature text (the text view, weight ``--text-weight``) and recombine their vectors. The
rate counts from the first ``embedded`` stream entry (model loading and process start
excluded) until every user has a text embedding and no claim or due text is left,
measured from outside through Redis.

On a machine with fewer cores than workers this shows the per-process overhead (the
processes share the cores and torch's threads), not linear scaling.

    .venv/bin/python bench/bench_encoder_scale_out.py --users 2000 --workers 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_ingest import cleanup
from bench.bench_scale_out import start_fleet, stop_fleet
from bench.encoder_texts import sample_texts
from segstream.config import load_settings
from segstream.keys import Keys
from segstream.redis_io import redis_client

CATS = ("electronics", "books", "garden", "music", "toys", "sports", "kitchen", "beauty")


def seed(client, keys: Keys, users: int, items: int, texts: list[str]) -> None:
    """Items with titles, and per user: text, interest state and a dirty mark."""
    rng = random.Random(5)
    now = time.time_ns() // 1_000_000
    pipe = client.pipeline(transaction=False)
    for i in range(items):
        cat = CATS[i % len(CATS)]
        pipe.hset(keys.item(f"i{i}"), mapping={"title": f"{cat} product number {i}",
                                               "category": cat})
    for u in range(users):
        uid = f"u{u}"
        pipe.set(keys.text(uid), texts[u % len(texts)] + f" (user {u})")
        pipe.zadd(keys.interest(uid), {f"i{rng.randrange(items)}": rng.uniform(0.5, 3.0)
                                       for _ in range(4)})
        pipe.zadd(keys.dirty(), {uid: now}, nx=True)
        if u % 500 == 499:
            pipe.execute()
    pipe.execute()


def finished(client, keys: Keys, users: int) -> bool:
    """Every user has a text embedding and nothing is queued, claimed or due. The
    embeddings are read first: a user's text write comes before its queue change, so
    queues read after complete embeddings cannot belong to an earlier moment."""
    with_text = sum(1 for u in range(users) if client.hexists(keys.emb(f"u{u}"), "text_vec"))
    if with_text < users:
        return False
    return not (client.zcard(keys.dirty()) or client.zcard(keys.text_due()))


def run_fleet(workers: int, users: int, items: int, texts: list[str], text_weight: float,
              cpu_share: float, threads: int, logdir: Path) -> tuple[float, float]:
    """(users/s, wall seconds) of ``workers`` encoder processes from first entry to done."""
    settings = load_settings()
    prefix = f"encscale{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    client = redis_client(settings.redis)
    seed(client, keys, users, items, texts)
    env = {**os.environ, "SEGSTREAM_REDIS__KEY_PREFIX": prefix,
           "SEGSTREAM_ENCODER__METRICS_PORT": "0", "SEGSTREAM_LOG_LEVEL": "WARNING",
           "SEGSTREAM_ENCODER__TEXT_MIN_INTERVAL_S": "0",
           "SEGSTREAM_ENCODER__TEXT_CPU_SHARE": str(cpu_share),
           "SEGSTREAM_INTEREST__VIEW_WEIGHTS": json.dumps(
               {"interest": 1.0, "text": text_weight}),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = start_fleet("encoder", workers, env, logdir, str(workers))
    first_at = 0.0
    try:
        while True:
            now = time.monotonic()
            if not first_at and client.exists(keys.embedded()) and client.xlen(keys.embedded()):
                first_at = now
            if first_at and finished(client, keys, users):
                break
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"an encoder process exited early; see {logdir}")
            time.sleep(0.2)
    finally:
        stop_fleet(procs)
        cleanup(client, settings.model_copy(update={
            "redis": settings.redis.model_copy(update={"key_prefix": prefix})}))
    wall = now - first_at
    return users / max(wall, 1e-9), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--text-weight", type=float, default=0.5,
                        help="feature-text view weight (> 0, so the text view runs)")
    parser.add_argument("--text-cpu-share", type=float, default=1.0,
                        help="encoder.text_cpu_share (1: the text view's full capacity; "
                             "the shipped 0.25 keeps CPU for claims)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per worker (default: cores / workers, min 1)")
    args = parser.parse_args()
    if args.text_weight <= 0:
        raise SystemExit("--text-weight must be > 0 (the benchmark measures the text view)")
    texts = sample_texts(min(args.users, 1_000))
    sizes = [int(n) for n in args.workers.split(",")]
    cores = os.cpu_count() or 1
    logdir = Path(f"/tmp/bench-encoder-scale-{uuid.uuid4().hex[:6]}")
    logdir.mkdir(parents=True)
    print(f"{args.users} users, {args.items} items, text weight {args.text_weight}, "
          f"text CPU share {args.text_cpu_share}; "
          f"{cores} CPU cores (with fewer cores than workers this shows per-process "
          f"overhead, not scaling); logs in {logdir}", flush=True)
    rates: dict[int, float] = {}
    for n in sizes:
        threads = args.threads or max(1, cores // n)
        rates[n], wall = run_fleet(n, args.users, args.items, texts, args.text_weight,
                                   args.text_cpu_share, threads, logdir)
        print(f"{n} worker{'s' if n > 1 else ''} x {threads} thread(s): "
              f"{rates[n]:,.0f} users/s ({wall:.1f} s; x{rates[n] / rates[sizes[0]]:.2f} "
              f"of {sizes[0]} worker{'s' if sizes[0] > 1 else ''})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
