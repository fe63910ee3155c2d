"""Scale-out benchmark (prints figures; not a test): events/s of 1, 2 and 4 ingest
consumers (``segstream run ingest`` processes in one group) on a 12-partition topic.

The same 100,000 records of 1,500 users (interleaved in event-time order, as in
``bench_ingest.py``) are produced once; each fleet size reads all of them in its own
consumer group and Redis namespace. The rate counts from the group's first offset commit
to its commit of the last record (process start-up, model-free as ingest is, and group
joins excluded), measured from outside through the committed offsets.

On a machine with fewer cores than consumers this shows the per-process overhead
(processes share the cores), not linear scaling.

    .venv/bin/python bench/bench_scale_out.py --clients kafka-python,confluent
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_ingest import cleanup, isolated, produce, traffic
from segstream.config import Settings, load_settings
from segstream.kafka_client import TopicPartition, kafka_clients
from segstream.redis_io import redis_client


def committed_total(consumer, topic: str, partitions: int) -> int:
    return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))


def start_fleet(service: str, n: int, env: dict[str, str], logdir: Path, tag: str
                ) -> list[subprocess.Popen[bytes]]:
    """``n`` ``segstream run <service>`` processes, each logging to ``logdir/<tag>-<i>.log``."""
    procs = []
    for i in range(n):
        with (logdir / f"{tag}-{i}.log").open("wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "segstream_services.cli", "run", service], env=env,
                stdout=log, stderr=subprocess.STDOUT))
    return procs


def stop_fleet(procs: list[subprocess.Popen[bytes]], timeout_s: float = 60.0) -> None:
    """SIGTERM every process still running (each finishes its batch), SIGKILL laggards."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()


def run_fleet(settings: Settings, backend: str, consumers: int, total: int,
              partitions: int, logdir: Path) -> float:
    """Events/s of ``consumers`` ingest processes from the first commit to the last."""
    group = f"{settings.ingest.group_id}-{backend}-{consumers}"
    prefix = f"{settings.redis.key_prefix}-{backend}-{consumers}"
    env = {**os.environ, "SEGSTREAM_TOPICS__EVENTS": settings.topics.events,
           "SEGSTREAM_TOPICS__DLQ": settings.topics.dlq,
           "SEGSTREAM_REDIS__KEY_PREFIX": prefix, "SEGSTREAM_INGEST__GROUP_ID": group,
           "SEGSTREAM_INGEST__METRICS_PORT": "0", "SEGSTREAM_KAFKA__CLIENT": backend,
           "SEGSTREAM_LOG_LEVEL": "WARNING"}
    watcher = kafka_clients(settings.kafka).consumer(group_id=group)
    procs = start_fleet("ingest", consumers, env, logdir, f"{backend}-{consumers}")
    first_at, first = 0.0, 0
    try:
        while True:
            done = committed_total(watcher, settings.topics.events, partitions)
            now = time.monotonic()
            if done and not first_at:
                first_at, first = now, done
            if done >= total:
                break
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"an ingest process exited early; see {logdir}")
            time.sleep(0.2)
    finally:
        stop_fleet(procs)
        watcher.close()
    cleanup(redis_client(settings.redis), settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"key_prefix": prefix})}))
    return (total - first) / max(now - first_at, 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_500)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--consumers", default="1,2,4")
    parser.add_argument("--clients", default="kafka-python")
    args = parser.parse_args()
    settings = isolated(load_settings(), f"scale{uuid.uuid4().hex[:8]}")
    total = produce(settings, traffic(args.users, args.days, args.events), args.partitions)
    sizes = [int(n) for n in args.consumers.split(",")]
    logdir = Path(f"/tmp/{settings.topics.events}")
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"{total} records on {args.partitions} partitions; {os.cpu_count()} CPU cores "
          f"(with fewer cores than consumers this shows per-process overhead, not scaling)")
    for backend in args.clients.split(","):
        rates = {n: run_fleet(settings, backend, n, total, args.partitions, logdir)
                 for n in sizes}
        base = rates[sizes[0]]
        print(f"{backend}: " + "; ".join(
            f"{n} consumer{'s' if n > 1 else ''} {r:,.0f} events/s (x{r / base:.2f})"
            for n, r in rates.items()), flush=True)
    admin = kafka_clients(settings.kafka).admin()
    admin.delete_topics([settings.topics.events, settings.topics.dlq])
    admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
