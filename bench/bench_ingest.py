"""Ingest benchmark (prints figures; not a test).

1. Throughput: 100,000 records of 1,500 users, interleaved in event-time order as real
   traffic is, are produced to a fresh topic. For each Kafka backend (kafka-python,
   confluent-kafka), in the same run: that library's own consumer that only reads and
   JSON-parses (the peer), then one ``IngestService`` on that backend doing the full
   processing (validation, Lua apply, texts, dirty queue, commits), each reading all of
   it in its own consumer group. Rates count from the first polled batch to the last
   record, so group joins are excluded from both. Ingest runs in each of ``--modes``:
   ``interest`` (as shipped) and ``no-interest`` (``interest.max_items = 0``: no interest
   state in the Lua call, no item registration), so the interest path's cost is measured
   in the same run; with ``--baseline REF`` also ``baseline``: the ingest of an earlier
   commit (``git archive REF``, run in a child process on the same topic, e.g. the commit
   before the interest path landed). ``--repeats`` rounds alternate the order (bare,
   modes..., then the reverse) and the medians are reported with the 1-minute load
   average of each run.
   Beside the rates, each run's CPU time per record: this process's (``process_time``,
   all its threads) plus, for ingest, the Redis server's (``INFO cpu``; exact only when
   nobody else uses that Redis: point ``SEGSTREAM_REDIS__PORT`` at a private one). On a
   machine shared with other work, CPU per record is the steadier figure; the rates say
   what this machine did at that moment.
2. Memory: users with a full synthetic history are applied straight to Redis (the same
   Lua script, no Kafka) with their texts; bytes per user are ``MEMORY USAGE`` of each
   user's keys (features, dedup, titles, text; embeddings are not ingest's) and the
   ``used_memory`` growth divided by users (which adds Redis' per-key overhead).

    .venv/bin/python bench/bench_ingest.py --mem-users ''     # throughput only
    .venv/bin/python bench/bench_ingest.py --mem-users '' --clients kafka-python \
        --repeats 3 --baseline 9dbe7be     # interest cost, and against the code before it

Everything it writes (topics aside) is deleted at the end; topics are prefixed
``bench-ingest-``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from typing import Any

from segstream.config import Settings, load_settings
from segstream.feature_store import FeatureStore, PendingEvent
from segstream.feature_text import render
from segstream.features import increments, summarize
from segstream.kafka_client import TopicSpec, kafka_clients
from segstream.kafka_client.confluent import ConfluentClients
from segstream.kafka_client.kafka_python import KafkaPythonClients
from segstream.redis_io import redis_client
from segstream.synthetic import SyntheticStream
from segstream_services.ingest.service import IngestService


def isolated(base: Settings, run: str) -> Settings:
    return base.model_copy(update={
        "topics": base.topics.model_copy(update={"events": f"bench-ingest-{run}",
                                                 "dlq": f"bench-ingest-{run}.dlq"}),
        "redis": base.redis.model_copy(update={"key_prefix": f"bench-{run}"}),
        "ingest": base.ingest.model_copy(update={"group_id": f"bench-ingest-{run}",
                                                 "metrics_port": 0})})


def on_backend(settings: Settings, backend: str, group: str) -> Settings:
    return settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"client": backend}),
        "ingest": settings.ingest.model_copy(update={"group_id": group})})


def produce(settings: Settings, records: list[tuple[bytes, bytes | None]],
            partitions: int) -> int:
    clients = kafka_clients(settings.kafka)
    admin = clients.admin()
    admin.create_topics([TopicSpec(settings.topics.events, partitions, {}),
                         TopicSpec(settings.topics.dlq, 1, {})])
    deadline = time.monotonic() + 30
    while not admin.describe([settings.topics.events]) and time.monotonic() < deadline:
        time.sleep(0.1)
    admin.close()
    producer = clients.producer(linger_ms=20, batch_size=512 * 1024)
    for key, value in records:
        producer.send(settings.topics.events, value, key=key)
    producer.flush()
    producer.close()
    return len(records)


def bare_rate(settings: Settings, backend: str, group: str, total: int) -> float:
    """Records/s of the backend's own consumer (no segstream code) that only reads and
    JSON-parses, from its first polled batch to the last record."""
    cfg = settings.ingest
    first = last = 0.0
    seen = 0
    if backend == "confluent":
        import confluent_kafka

        c = confluent_kafka.Consumer({
            **ConfluentClients(settings.kafka).common(), "group.id": group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "max.partition.fetch.bytes": cfg.max_partition_fetch_bytes})
        c.subscribe([settings.topics.events])
        while seen < total:
            msgs = c.consume(num_messages=cfg.max_poll_records, timeout=0.5)
            if msgs and not first:
                first = time.monotonic()
            for m in msgs:
                if m.error() is None:
                    with contextlib.suppress(ValueError, TypeError):
                        json.loads(m.value() or b"")
                    seen += 1
            if seen:
                last = time.monotonic()
        c.close()
    else:
        import kafka

        k = kafka.KafkaConsumer(
            settings.topics.events, **KafkaPythonClients(settings.kafka).common(),
            group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=cfg.max_poll_records,
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes)
        while seen < total:
            polled = k.poll(timeout_ms=500, max_records=cfg.max_poll_records)
            for batch in polled.values():
                if not first:
                    first = time.monotonic()
                for record in batch:
                    with contextlib.suppress(ValueError, TypeError):
                        json.loads(record.value)
                seen += len(batch)
            if seen:
                last = time.monotonic()
        k.close(autocommit=False)
    return seen / (last - first)


MODES = ("interest", "no-interest")


def in_mode(settings: Settings, mode: str) -> Settings:
    """``settings`` for one ingest mode (``MODES``)."""
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    if mode == "interest":
        return settings
    return settings.model_copy(update={"interest": settings.interest.model_copy(
        update={"max_items": 0})})


def ingest_rate(settings: Settings, backend: str, mode: str, run: str, total: int
                ) -> tuple[float, Any]:
    """One ``IngestService`` in ``mode`` reading everything in a group and Redis namespace
    of its own (deleted afterwards): (records/s, its ``RunStats``)."""
    own = on_backend(in_mode(settings, mode), backend,
                     f"{settings.ingest.group_id}-{backend}-{mode}-{run}")
    own = own.model_copy(update={"redis": own.redis.model_copy(
        update={"key_prefix": f"{settings.redis.key_prefix}-{backend}-{mode}-{run}"})})
    stats = IngestService(own).run(max_records=total)
    cleanup(redis_client(own.redis), own)
    return stats.rate, stats


BASELINE_TIMEOUT_S = 300
BASELINE_RUN = """
import json, sys, time
sys.path[:0] = [sys.argv[1] + "/shared", sys.argv[1] + "/services"]
import segstream
from segstream.config import load_settings
from segstream_services.ingest.service import IngestService
assert segstream.__file__.startswith(sys.argv[1]), segstream.__file__
settings = load_settings()
cpu = time.process_time()
stats = IngestService(settings).run(max_records=int(sys.argv[2]))
print(json.dumps({"rate": stats.rate, "cpu": time.process_time() - cpu}))
"""


def baseline_tree(ref: str) -> str:
    """The library and services of commit ``ref``, extracted to a temporary folder."""
    root = tempfile.mkdtemp(prefix="bench-ingest-baseline-")
    archive = subprocess.run(["git", "archive", ref, "shared", "services"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    return root


def baseline_rate(settings: Settings, backend: str, tree: str, run: str, total: int
                  ) -> tuple[float, float] | None:
    """The ingest of the commit in ``tree`` in a child process, in a group and Redis
    namespace of its own (deleted afterwards): (records/s, its CPU seconds); None when it
    did not read everything within ``BASELINE_TIMEOUT_S``."""
    prefix = f"{settings.redis.key_prefix}-{backend}-baseline-{run}"
    env = {**os.environ, "SEGSTREAM_TOPICS__EVENTS": settings.topics.events,
           "SEGSTREAM_TOPICS__DLQ": settings.topics.dlq,
           "SEGSTREAM_REDIS__KEY_PREFIX": prefix, "SEGSTREAM_KAFKA__CLIENT": backend,
           "SEGSTREAM_INGEST__GROUP_ID": f"{settings.ingest.group_id}-{backend}-baseline-{run}",
           "SEGSTREAM_INGEST__METRICS_PORT": "0"}
    own = settings.model_copy(update={"redis": settings.redis.model_copy(
        update={"key_prefix": prefix})})
    try:
        out = subprocess.run([sys.executable, "-c", BASELINE_RUN, tree, str(total)],
                             env=env, check=True, capture_output=True, text=True,
                             timeout=BASELINE_TIMEOUT_S).stdout
    except subprocess.TimeoutExpired:
        return None
    finally:
        cleanup(redis_client(own.redis), own)
    found = json.loads(out.strip().splitlines()[-1])
    return float(found["rate"]), float(found["cpu"])


def load() -> float:
    return os.getloadavg()[0]


def redis_cpu(settings: Settings) -> float:
    """CPU seconds the Redis server has used (user + system)."""
    info = redis_client(settings.redis).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(settings: Settings, backend: str, modes: list[str], repeats: int, total: int,
            tree: str | None = None) -> None:
    """Bare consumer and ingest in each mode, ``repeats`` interleaved rounds; prints each
    run and the medians."""
    rates: dict[str, list[float]] = defaultdict(list)
    cpus: dict[str, list[float]] = defaultdict(list)  # CPU µs per record
    loads: list[float] = []
    outcomes: Any = None
    for r in range(repeats):
        order = ["bare", *modes]
        for name in order if r % 2 == 0 else order[::-1]:
            before, cpu0, rcpu0 = load(), time.process_time(), redis_cpu(settings)
            if name == "bare":
                rate = bare_rate(settings, backend,
                                 f"{settings.ingest.group_id}-bare-{backend}-{r}", total)
                rcpu0 = redis_cpu(settings)  # the bare reader uses no Redis
            elif name == "baseline" and tree is not None:
                found = baseline_rate(settings, backend, tree, str(r), total)
                if found is None:
                    print(f"  {backend} round {r + 1}: baseline did not finish within "
                          f"{BASELINE_TIMEOUT_S}s (left out)", flush=True)
                    continue
                rate, child = found
                cpu0 -= child  # the child's CPU, counted as this process's
            else:
                rate, stats = ingest_rate(settings, backend, name, str(r), total)
                outcomes = outcomes or stats.outcomes
            py = time.process_time() - cpu0
            rd = redis_cpu(settings) - rcpu0
            loads.append((before + load()) / 2)
            rates[name].append(rate)
            cpus[name].append((py + rd) / total * 1e6)
            print(f"  {backend} round {r + 1}: {name:12s} {rate:9,.0f} records/s, CPU "
                  f"{py / total * 1e6:5.1f} µs/record here + {rd / total * 1e6:4.1f} in Redis "
                  f"(load {loads[-1]:.1f})", flush=True)
    med = {name: statistics.median(v) for name, v in rates.items()}
    cpu = {name: statistics.median(v) for name, v in cpus.items()}
    bare = med["bare"]
    parts = [f"bare consumer (read + json.loads) {bare:9,.0f} records/s "
             f"({cpu['bare']:.1f} CPU µs/record)"]
    parts += [f"ingest [{m}] {med[m]:9,.0f} records/s ({med[m] / bare:.2f} of bare; "
              f"{cpu[m]:.1f} CPU µs/record, CPU ratio {cpu['bare'] / cpu[m]:.2f})"
              for m in modes if m in med]
    print(f"{backend:12s}: " + " | ".join(parts) + f" -- medians of {repeats}, "
          f"load {min(loads):.1f}-{max(loads):.1f}; target ingest / bare >= 0.5", flush=True)
    if "interest" in med and "no-interest" in med:
        cost = med["no-interest"] / med["interest"] - 1
        per_round = [b / a - 1 for a, b in zip(rates["interest"], rates["no-interest"],
                                                strict=True)]
        cpu_rounds = [a / b - 1 for a, b in zip(cpus["interest"], cpus["no-interest"],
                                                 strict=True)]
        print(f"{backend:12s}: interest path costs {cost:+.1%} of ingest time by rate "
              f"(no-interest / interest rate - 1; per round "
              f"{', '.join(f'{c:+.1%}' for c in per_round)}), "
              f"{cpu['interest'] / cpu['no-interest'] - 1:+.1%} by CPU per record "
              f"(per round {', '.join(f'{c:+.1%}' for c in cpu_rounds)}); "
              f"target <= +10%", flush=True)
    if "baseline" in med:
        for m in [m for m in modes if m != "baseline" and m in med]:
            print(f"{backend:12s}: [{m}] vs the baseline commit: rate "
                  f"{med[m] / med['baseline'] - 1:+.1%}, CPU per record "
                  f"{cpu[m] / cpu['baseline'] - 1:+.1%} (target >= -10%)",
                  flush=True)
    if outcomes is not None:
        print("  outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))


def traffic(users: int, days: int, events: int) -> list[tuple[bytes, bytes | None]]:
    """The first ``events`` records of the persona stream: users interleaved in event-time
    order as real traffic is (plus 0.5% malformed, 1% duplicates, 0.5% bots)."""
    stream = SyntheticStream(users=users, days=days, seed=11, end_ms=int(time.time() * 1000),
                             malformed=0.005, duplicates=0.01, bots=0.005)
    return list(itertools.islice(stream.records(), events))


def memory(base: Settings, users: int, days: int) -> dict[str, float]:
    """Bytes per user after applying ``users`` users' synthetic history to Redis."""
    run = uuid.uuid4().hex[:8]
    settings = isolated(base, f"mem{run}")
    client = redis_client(settings.redis)
    store = FeatureStore(client, settings)
    cfg = settings.ingest
    before = int(client.info("memory")["used_memory"])
    stream = SyntheticStream(users=users, days=days, seed=5, end_ms=int(time.time() * 1000))
    by_user: dict[str, list[PendingEvent]] = defaultdict(list)
    events = 0
    started = time.monotonic()
    states: dict[str, Any] = {}

    def flush() -> None:
        states.update({uid: r.state for uid, r in store.apply(by_user).items()})
        by_user.clear()

    from segstream.events import parse_event
    types = settings.events.allowed_types
    for raw in stream.events():
        event = parse_event(json.dumps(raw), types)
        by_user[event.user_id].append(PendingEvent(event.event_id, increments(event, cfg)))
        events += 1
        if events % 20_000 == 0:
            flush()
    flush()
    updates = [(uid, render(summarize(state, cfg), cfg), True) for uid, state in states.items()]
    for i in range(0, len(updates), 2_000):
        store.store_texts(updates[i:i + 2_000])
    apply_s = time.monotonic() - started
    after = int(client.info("memory")["used_memory"])
    pipe = client.pipeline(transaction=False)
    uids = list(states)
    per_key = len(store.user_keys(uids[0])) if uids else 0  # every per-user key
    for uid in uids:
        for key in store.user_keys(uid):
            pipe.memory_usage(key, samples=0)
    sizes = pipe.execute()
    per_user = [sum(s or 0 for s in sizes[i * per_key:(i + 1) * per_key])
                for i in range(len(uids))]
    cleanup(client, settings)
    return {"users": len(uids), "events": events, "events_per_user": events / len(uids),
            "mean_bytes": statistics.fmean(per_user), "p50_bytes": statistics.median(per_user),
            "p99_bytes": sorted(per_user)[int(len(per_user) * 0.99)],
            "used_memory_per_user": (after - before) / len(uids), "apply_s": apply_s}


def cleanup(client: Any, settings: Settings) -> None:
    prefix = settings.redis.key_prefix
    for pattern in (f"{prefix}:*", f"{{{prefix}:q}}:*"):
        batch = []
        for key in client.scan_iter(match=pattern, count=5_000):
            batch.append(key)
            if len(batch) >= 5_000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_500)
    parser.add_argument("--events", type=int, default=100_000,
                        help="records produced (the first of the stream)")
    parser.add_argument("--clients", default="kafka-python,confluent",
                        help="comma list of Kafka backends to measure")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--mem-users", default="10000,100000",
                        help="comma-separated user counts for the memory figures ('' = skip)")
    parser.add_argument("--mem-days", type=int, default=30)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma list of ingest modes: interest (as shipped), no-interest "
                             "(interest.max_items 0)")
    parser.add_argument("--baseline", default="",
                        help="also run the ingest of this earlier commit (git ref)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved rounds per backend (medians are reported)")
    args = parser.parse_args()
    base = load_settings()

    if not args.skip_throughput:
        run = uuid.uuid4().hex[:8]
        settings = isolated(base, run)
        records = traffic(args.users, args.days, args.events)
        t0 = time.monotonic()
        total = produce(settings, records, args.partitions)
        print(f"produced {total} records ({args.users} users, {args.days} days, "
              f"{args.partitions} partitions) in {time.monotonic() - t0:.1f}s", flush=True)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        tree = baseline_tree(args.baseline) if args.baseline else None
        if tree is not None:
            modes.append("baseline")
        for backend in args.clients.split(","):
            # each reader in its own group and Redis namespace, one after the other
            measure(settings, backend, modes, args.repeats, total, tree)
        admin = kafka_clients(settings.kafka).admin()
        admin.delete_topics([settings.topics.events, settings.topics.dlq])
        admin.close()

    for users in [int(u) for u in args.mem_users.split(",") if u.strip()]:
        m = memory(base, users, args.mem_days)
        print(f"memory, {m['users']:,} users x {args.mem_days} days "
              f"({m['events_per_user']:.0f} events/user, applied in {m['apply_s']:.0f}s): "
              f"MEMORY USAGE mean {m['mean_bytes']:,.0f} B/user, p50 {m['p50_bytes']:,.0f}, "
              f"p99 {m['p99_bytes']:,.0f}; used_memory growth "
              f"{m['used_memory_per_user']:,.0f} B/user (target <= 4,096)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
