"""Segmenter benchmarks (print figures; not tests).

``inertia``: one streamed pass of MiniBatchKMeans through ``OnlineSegmenter`` (cold start
on the first 10·k users, then one ``partial_fit`` step per batch, with and without the
maintenance refit and forgetting), against full KMeans (k-means++, n_init=10) on the same
embeddings: final inertia ratio and per-batch update time. Data: seeded Gaussian mixtures
on the unit sphere (unequal weights), and optionally persona embeddings from the real
encoder (``--personas USERS``).

    .venv/bin/python bench/bench_segmenter.py inertia --n 20000 --k 12

``freshness``: the whole pipeline as three processes (``segstream run ingest``, ``encoder``,
``segmenter``) on the local Kafka and Redis. After a warm-up history (cold start done),
background events of the warm users are produced at ``--rate`` events/s with ``ts`` = now,
and every ``--probe-ms`` a new probe user sends a burst of ``--burst`` events of one
persona at one instant. Freshness is the time from that burst (the user's last event) to
the probe's first segment record arriving on the output topic: p50/p99. The segment follows
the interest view (no transformer pass per event); the feature-text view lags behind on
its own schedule, so its lag is reported separately: burst → the probe's text embedding
stored (``text_ms`` in its ``emb`` hash; none when the text view's weight is 0).

    .venv/bin/python bench/bench_segmenter.py freshness --rate 1000 --seconds 60

Topics are prefixed ``bench-seg-``; Redis keys use a ``bench-seg-<run>`` prefix and are
deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

from segstream.config import Settings, load_settings
from segstream.kafka_client import KafkaClients, kafka_clients
from segstream.kafka_io import ensure_topics, topic_specs
from segstream.redis_io import Keys, redis_client
from segstream.segmentation import Observation, OnlineSegmenter, SegConfig
from segstream.synthetic import PERSONAS, SyntheticStream


# ---------------------------------------------------------------------- inertia
def mixture(n: int, k: int, dim: int, seed: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(k, 2.0))
    labels = rng.choice(k, size=n, p=weights)
    X = centres[labels] + spread / np.sqrt(dim) * rng.normal(size=(n, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X[rng.permutation(n)]


def inertia_of(X: np.ndarray, centres: np.ndarray) -> float:
    d2 = (X * X).sum(1)[:, None] - 2 * X @ centres.T + (centres * centres).sum(1)[None, :]
    return float(np.maximum(d2, 0).min(axis=1).sum())


def stream_pass(X: np.ndarray, cfg: SegConfig, batch: int) -> tuple[float, float, int]:
    """Final inertia, mean seconds per batch update, maintenance refits adopted."""
    m = OnlineSegmenter(cfg)
    times, refits = [], 0
    latest: dict[str, np.ndarray] = {}
    for i in range(0, len(X), batch):
        obs = [Observation(f"u{j}", X[j]) for j in range(i, min(i + batch, len(X)))]
        for o in obs:
            latest[o.key] = o.vector
        t0 = time.perf_counter()
        m.observe(obs, now_ms=i)
        if m.maintenance_due:
            before = m.version
            m.maintain([Observation(u, latest[u]) for u in m.recent_keys()], now_ms=i)
            refits += m.version != before
        times.append(time.perf_counter() - t0)
    assert m.centres is not None
    return inertia_of(X, m.centres), statistics.mean(times), refits


def plain_minibatch(X: np.ndarray, k: int, batch: int, seed: int) -> float:
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=batch, n_init=3)
    for i in range(0, len(X), batch):
        km.partial_fit(X[i:i + batch])
    return inertia_of(X, km.cluster_centers_)


def persona_embeddings(users: int) -> np.ndarray:
    from segstream.encoding import Encoder
    from segstream.events import event_from_dict
    from segstream.feature_text import render
    from segstream.features import UserState, increments, summarize

    settings = load_settings()
    states: dict[str, UserState] = {}
    for e in SyntheticStream(users=users, days=30, seed=11, activity=0.3).events():
        ev = event_from_dict(e, settings.events.allowed_types)
        states.setdefault(ev.user_id, UserState()).apply(increments(ev, settings.ingest),
                                                          settings.ingest)
    texts = [render(summarize(s, settings.ingest), settings.ingest) for s in states.values()]
    X = Encoder().encode(texts).astype(np.float64)
    return X[np.random.default_rng(0).permutation(len(X))]


def cmd_inertia(args: argparse.Namespace) -> None:
    datasets = {f"mixture{s}": mixture(args.n, args.k, args.dim, s, args.spread)
                for s in range(args.seeds)}
    if args.personas:
        datasets["personas"] = persona_embeddings(args.personas)
    print(f"{'data':10} {'n':>6} {'variant':34} {'inertia/KMeans':>14} {'ms/batch':>9} "
          f"{'refits':>6}")
    for name, X in datasets.items():
        k = len(PERSONAS) if name == "personas" else args.k
        full = KMeans(n_clusters=k, n_init=10, random_state=0).fit(X).inertia_
        rows = [("sklearn MiniBatchKMeans partial_fit", plain_minibatch(X, k, args.batch, 0),
                 float("nan"), 0)]
        for label, cfg in (
            ("segstream, no refit, no forgetting",
             SegConfig(k=k, half_life_points=0, refit_every=0)),
            ("segstream, no refit, default half-life", SegConfig(k=k, refit_every=0)),
            ("segstream defaults (refit + half-life)", SegConfig(k=k)),
        ):
            rows.append((label, *stream_pass(X, cfg, args.batch)))
        for label, inertia, secs, refits in rows:
            ms = "" if np.isnan(secs) else f"{secs * 1000:9.2f}"
            print(f"{name:10} {len(X):6d} {label:34} {inertia / full:14.4f} {ms:>9} "
                  f"{refits:6d}")


# ---------------------------------------------------------------------- freshness
def isolated(base: Settings, run: str) -> tuple[Settings, dict[str, str]]:
    env = {
        "SEGSTREAM_REDIS__KEY_PREFIX": f"bench-seg-{run}",
        "SEGSTREAM_TOPICS__EVENTS": f"bench-seg-{run}.events",
        "SEGSTREAM_TOPICS__DLQ": f"bench-seg-{run}.dlq",
        "SEGSTREAM_TOPICS__SEGMENTS": f"bench-seg-{run}.segments",
        "SEGSTREAM_TOPICS__CATALOG": f"bench-seg-{run}.catalog",
        "SEGSTREAM_INGEST__GROUP_ID": f"bench-seg-{run}.ingest",
        "SEGSTREAM_INGEST__METRICS_PORT": "0",
        "SEGSTREAM_ENCODER__METRICS_PORT": "0",
        "SEGSTREAM_SEGMENTER__METRICS_PORT": "0",
        "SEGSTREAM_SEGMENTER__K": str(len(PERSONAS)),
        "SEGSTREAM_SEGMENTER__BLOCK_MS": "20",
        "SEGSTREAM_ENCODER__MAX_WAIT_MS": "50",
        "SEGSTREAM_INGEST__POLL_TIMEOUT_MS": "20",
    }
    for key, value in env.items():
        os.environ[key] = value
    return load_settings(), env


class Probes:
    """Reads the segments topic; remembers when each probe user's first record arrived."""

    def __init__(self, kafka: KafkaClients, topic: str) -> None:
        self.consumer = kafka.consumer(topic, group_id=None, auto_offset_reset="latest",
                                       fetch_max_wait_ms=10)
        self.first: dict[str, float] = {}
        self.records = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            batch = self.consumer.poll(50, 500)
            now = time.time()
            for msg in batch:
                self.records += 1
                uid = json.loads(msg.value or b"{}").get("user_id", "")
                if uid.startswith("probe-"):
                    self.first.setdefault(uid, now)
        self.consumer.close()


def retimed(event: dict[str, Any], uid: str, ts_ms: int) -> bytes:
    return json.dumps({**event, "user_id": uid, "ts": ts_ms,
                       "event_id": uuid.uuid4().hex}).encode()


def cmd_freshness(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:8]
    settings, env = isolated(load_settings(), run)
    kafka = kafka_clients(settings.kafka)
    admin = kafka.admin()
    ensure_topics(admin, topic_specs(settings.topics))
    admin.close()
    client = redis_client(settings.redis)
    keys = Keys(settings.redis.key_prefix)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the services
    logs = {name: open(f"{args.logs}/bench-seg-{run}-{name}.log", "w")  # noqa: SIM115
            for name in ("ingest", "encoder", "segmenter")}
    procs = [subprocess.Popen([sys.executable, "-m", "segstream_services.cli", "run", name],
                              env={**os.environ, **env}, stderr=log)
             for name, log in logs.items()]
    print(f"service logs: {args.logs}/bench-seg-{run}-*.log")
    producer = kafka.producer(linger_ms=2)
    try:
        synthetic = SyntheticStream(users=args.users, days=30, seed=5, activity=0.3)
        events = list(synthetic.events())
        by_persona: dict[str, list[dict[str, Any]]] = {}
        truth = synthetic.truth()  # computed once: it is rebuilt on every call
        for e in events:
            by_persona.setdefault(truth[e["user_id"]], []).append(e)
        now = int(time.time() * 1000)
        shift = now - max(e["ts"] for e in events)
        for e in events:  # the warm-up history, moved to end now
            producer.send(settings.topics.events, key=e["user_id"].encode(),
                          value=json.dumps({**e, "ts": e["ts"] + shift}).encode())
        producer.flush()
        catalog = f"{{{settings.redis.key_prefix}:seg}}:catalog"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (
                client.hlen(catalog) and client.zcard(keys.dirty()) == 0):
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a service exited during the warm-up: see its log")
            time.sleep(0.5)
        print(f"warm-up: {len(events)} events of {args.users} users segmented")
        probes = Probes(kafka, settings.topics.segments)
        probes.thread.start()
        time.sleep(2)
        sent_at: dict[str, float] = {}
        rng = random.Random(1)
        interval = 1.0 / args.rate
        start = time.monotonic()
        n_sent, next_probe, i = 0, start, 0
        while time.monotonic() - start < args.seconds:
            t = time.monotonic()
            if t >= next_probe:
                persona = rng.choice(list(by_persona))
                uid = f"probe-{i}"
                ts = int(time.time() * 1000)
                for e in rng.sample(by_persona[persona], args.burst):
                    producer.send(settings.topics.events, key=uid.encode(),
                                  value=retimed(e, uid, ts))
                producer.flush()
                sent_at[uid] = time.time()
                i += 1
                next_probe += args.probe_ms / 1000
            e = events[n_sent % len(events)]
            producer.send(settings.topics.events, key=e["user_id"].encode(),
                          value=retimed(e, e["user_id"], int(time.time() * 1000)))
            n_sent += 1
            ahead = start + n_sent * interval - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        producer.flush()
        elapsed = time.monotonic() - start
        time.sleep(10)
        probes.stop.set()
        probes.thread.join(5)
        lat = sorted(probes.first[u] - sent_at[u] for u in sent_at if u in probes.first)
        stage = []  # encoder's write of the probe's vector -> its record (segmenter + Kafka)
        for uid in probes.first:
            encoded = client.hget(keys.emb(uid), "encoded_ms")
            if encoded:
                stage.append(probes.first[uid] - int(encoded) / 1000)
        stage.sort()
        text_lag = sorted(int(t) / 1000 - sent_at[u] for u in sent_at
                          if (t := client.hget(keys.emb(u), "text_ms")))
        print(f"load: {n_sent / elapsed:.0f} background events/s for {elapsed:.0f}s "
              f"+ {len(sent_at)} probe bursts of {args.burst} events")
        if lat:
            p50 = lat[len(lat) // 2]
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(f"freshness (last event -> change record): p50 {p50 * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms over {len(lat)} "
                  f"probes ({len(sent_at) - len(lat)} without a record)")
            if stage:
                print(f"segmenter stage (vector stored -> record received): p50 "
                      f"{stage[len(stage) // 2] * 1000:.0f} ms, p99 "
                      f"{stage[min(len(stage) - 1, int(len(stage) * 0.99))] * 1000:.0f} ms "
                      "(a probe re-encoded later than its first record counts low)")
            if text_lag:
                print(f"feature-text view (last event -> text embedding stored): p50 "
                      f"{text_lag[len(text_lag) // 2] * 1000:.0f} ms, p99 "
                      f"{text_lag[min(len(text_lag) - 1, int(len(text_lag) * 0.99))] * 1000:.0f}"
                      f" ms over {len(text_lag)} probes")
            else:
                print("feature-text view: not embedded (view weight 0 or not yet due)")
        else:
            print("no probe produced a record")
    finally:
        producer.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        for log in logs.values():
            log.close()
        for key in client.scan_iter(match=f"*bench-seg-{run}*", count=1000):
            client.delete(key)
        admin = kafka.admin()  # the run's topics go too
        admin.delete_topics([t for t in admin.list_topics() if t.startswith(f"bench-seg-{run}.")])
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inertia", help="streamed MiniBatchKMeans vs full KMeans")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--k", type=int, default=12)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--spread", type=float, default=0.6, help="noise norm per point")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--personas", type=int, default=0, help="also N encoded persona users")
    p.set_defaults(func=cmd_inertia)
    p = sub.add_parser("freshness", help="pipeline freshness at a given event rate")
    p.add_argument("--rate", type=float, default=1000.0, help="background events/s")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--users", type=int, default=1000, help="warm-up users")
    p.add_argument("--probe-ms", type=float, default=250.0)
    p.add_argument("--burst", type=int, default=5)
    p.add_argument("--logs", default="/tmp", help="folder for the services' logs")
    p.set_defaults(func=cmd_freshness)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
