"""Read API benchmark (prints figures; not a test).

``GET /v1/users/{id}`` of ``segstream serve`` (a child process, as deployed) against a
Redis holding ``--users`` segment hashes, beside the peer: a raw redis-py ``HGETALL`` loop
over the same keys, in the same run; also ``SegmentClient.get`` in-process (the Python
client's own cost). Users are drawn uniformly at random. The HTTP load comes from
``--concurrency`` threads, each with one keep-alive connection and a minimal HTTP/1.1
client (raw sockets), so the generator costs as little CPU as possible; it shares the
machine with the server and Redis, as does the peer loop.

    .venv/bin/python bench/bench_api.py --users 100000 --seconds 10

Everything is written under a fresh key prefix ``bench-api-<run>`` and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

from segstream.client import SegmentClient
from segstream.config import Settings, load_settings
from segstream.keys import Keys
from segstream.redis_io import redis_client


def populate(settings: Settings, users: int) -> list[str]:
    """``users`` segment hashes in two segments, their member sets and the catalog."""
    r, keys = redis_client(settings.redis), Keys(settings.redis.key_prefix)
    now = int(time.time() * 1000)
    iso = "2026-01-01T00:00:00.000Z"
    for sid in ("s1", "s2"):
        r.hset(keys.seg_catalog(), sid, json.dumps({
            "schema_version": 1, "segment_id": sid, "tier": 2, "tier_path": ["f1", sid],
            "status": "active", "label": f"label {sid}", "description": "", "top_terms": [],
            "size": users // 2, "children": [], "centroids_version": 1,
            "model_version": "bench", "updated_at": iso,
            "lineage": {"born_at": iso, "origin": "cold-start", "parents": [],
                        "split_from": None, "merged_into": None, "retired_at": None}}))
    ids = [f"bench-user-{i}" for i in range(users)]
    for start in range(0, users, 2_000):
        pipe = r.pipeline(transaction=False)
        for i, uid in enumerate(ids[start:start + 2_000], start):
            sid, other = ("s1", "s2") if i % 2 else ("s2", "s1")
            pipe.hset(keys.seg(uid), mapping={
                "segment_id": sid, "confidence": 0.83,
                "memberships": json.dumps([[sid, 0.83], [other, 0.17]]),
                "tier_path": json.dumps(["f1", sid]), "engagement": "active",
                "model_version": "bench", "centroids_version": 1, "assigned_ms": now,
                "text_hash": "0" * 32, "first_seen_ms": now, "last_active_ms": now,
                "frequency": 12, "monetary": 10.5})
            pipe.zadd(keys.seg_members(sid), {uid: 0})
        pipe.execute()
    r.close()
    return ids


def cleanup(settings: Settings) -> int:
    r, prefix = redis_client(settings.redis), settings.redis.key_prefix
    n = 0
    for pattern in (f"{prefix}:*", f"{{{prefix}:*"):
        batch = []
        for key in r.scan_iter(match=pattern, count=5_000):
            batch.append(key)
            if len(batch) == 5_000:
                n += r.unlink(*batch)
                batch = []
        if batch:
            n += r.unlink(*batch)
    r.close()
    return n


def summary(name: str, latencies: list[float], seconds: float) -> dict[str, float]:
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100)
    row = {"ops": len(lat), "per_s": len(lat) / seconds, "p50_ms": q[49] * 1e3,
           "p99_ms": q[98] * 1e3}
    print(f"{name:<34} {row['per_s']:>10,.0f}/s   p50 {row['p50_ms']:7.3f} ms   "
          f"p99 {row['p99_ms']:7.3f} ms   ({row['ops']:,} calls)", flush=True)
    return row


def loop(call: Callable[[str], object], ids: list[str], seconds: float) -> list[float]:
    """One thread calling ``call`` on random users for ``seconds``; per-call latencies."""
    rng, out = random.Random(1), []
    end = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < end:
        call(rng.choice(ids))
        out.append(time.perf_counter() - t0)
    return out


class RawHttp:
    """A minimal keep-alive HTTP/1.1 GET client (Content-Length bodies only)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def get(self, path: str) -> int:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return int(head[9:12])


def http_load(port: int, ids: list[str], seconds: float, concurrency: int) -> list[float]:
    results: list[list[float]] = [[] for _ in range(concurrency)]
    bad: list[int] = []

    def worker(i: int) -> None:
        conn = RawHttp(port)

        def call(uid: str) -> None:
            status = conn.get(f"/v1/users/{uid}")
            if status != 200:
                bad.append(status)

        results[i] = loop(call, ids, seconds)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if bad:
        raise SystemExit(f"{len(bad)} requests failed, e.g. status {bad[0]}")
    return [x for r in results for x in r]


def start_server(settings: Settings) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**os.environ, "SEGSTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix,
           "SEGSTREAM_LOG_LEVEL": "WARNING"}
    env.pop("SEGSTREAM_API__TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "segstream_services.cli", "serve",
                             "--port", str(port)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            RawHttp(port).get("/healthz")
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("segstream serve did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0, help="per measurement (10)")
    ap.add_argument("--concurrency", type=int, default=8, help="HTTP connections (8)")
    args = ap.parse_args()
    base = load_settings()
    settings = base.model_copy(update={"redis": base.redis.model_copy(update={
        "key_prefix": f"bench-api-{uuid.uuid4().hex[:8]}"})})
    t0 = time.perf_counter()
    ids = populate(settings, args.users)
    print(f"{len(ids):,} users written in {time.perf_counter() - t0:.1f} s "
          f"(prefix {settings.redis.key_prefix}); {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    proc = None
    try:
        raw = redis_client(settings.redis)
        keys = Keys(settings.redis.key_prefix)
        peer = summary("redis-py HGETALL loop (1 thread)",
                       loop(lambda u: raw.hgetall(keys.seg(u)), ids, args.seconds),
                       args.seconds)
        client = SegmentClient(settings)
        summary("SegmentClient.get (1 thread)", loop(client.get, ids, args.seconds),
                args.seconds)
        proc, port = start_server(settings)
        http_load(port, ids, 1.0, args.concurrency)  # warm-up
        api = summary(f"GET /v1/users/{{id}} ({args.concurrency} conns)",
                      http_load(port, ids, args.seconds, args.concurrency), args.seconds)
        print(f"ratio: API {api['per_s'] / peer['per_s']:.2f}x the raw HGETALL loop's "
              f"requests/s; p99 {api['p99_ms']:.2f} ms vs {peer['p99_ms']:.3f} ms")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        print(f"deleted {cleanup(settings):,} keys", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
