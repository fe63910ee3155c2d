"""`segstream demo`: the whole pipeline on this machine, watched live, then torn down.

1. Bring up the local Kafka and Redis (unless already running).
2. Give the run its own topics (``segstream.<run>.*``) and Redis key prefix, so a demo
   never reads an earlier run's state, and start ``segstream run ingest``, ``encoder``
   and ``segmenter`` as child processes (in their own sessions: Ctrl-C reaches only the
   demo, which then stops them in order with SIGTERM).
3. Stream the synthetic personas (or ``--file`` through the replay reader) into the
   events topic from a background thread, remembering when each user's events were sent.
4. Watch ``segments`` and ``catalog`` and redraw a live view: changes per second, segment
   sizes and labels, progress.
5. Stop when everything sent has been consumed and no segment changed for ``--settle``
   seconds (or at ``--max-seconds``), print the summary (segments, sizes, labels, ARI
   against the personas, events/s, freshness p50/p99), stop the services, delete the
   run's topics, and stop Kafka and Redis if the demo started them.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from segstream.config import Settings, TopicSettings
from segstream.errors import InfraError
from segstream.kafka_io import KafkaClients, ensure_topics, topic_specs

if TYPE_CHECKING:
    from rich.console import Console, Group

SERVICES = ("ingest", "encoder", "segmenter")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class Feed:
    """What the background producer has sent, for progress and freshness."""

    total: int | None = None
    sent: int = 0
    done: bool = False
    error: str | None = None
    started: float = 0.0
    finished: float = 0.0
    sent_at: dict[str, list[int]] = field(default_factory=dict)  # user -> wall ms of sends
    lock: threading.Lock = field(default_factory=threading.Lock)


def _produce(clients: KafkaClients, topic: str, records: Iterable[tuple[bytes, bytes | None]],
             rate: float, feed: Feed, stop: threading.Event) -> None:
    """Send ``records`` at most ``rate`` a second (0: no limit) until done or stopped."""
    try:
        producer = clients.producer(linger_ms=20, batch_size=256 * 1024)
        feed.started = time.monotonic()
        for key, value in records:
            if stop.is_set():
                break
            producer.send(topic, key=key, value=value)
            now_ms = int(time.time() * 1000)
            with feed.lock:
                feed.sent += 1
                if key:
                    feed.sent_at.setdefault(key.decode(), []).append(now_ms)
            if rate and feed.sent % 100 == 0:
                ahead = feed.sent / rate - (time.monotonic() - feed.started)
                if ahead > 0:
                    stop.wait(ahead)
        producer.flush()
        producer.close()
    except Exception as exc:  # reported in the live view and the summary
        feed.error = f"{type(exc).__name__}: {exc}"
    finally:
        feed.finished = time.monotonic()
        feed.done = True


@dataclass
class View:
    """The segment feed as the demo sees it."""

    assignment: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    paths: dict[str, list[str]] = field(default_factory=dict)
    changes: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=5_000))
    freshness_ms: list[int] = field(default_factory=list)
    last_change: float = field(default_factory=time.monotonic)

    def take(self, topic_kind: str, value: dict, feed: Feed) -> None:
        if topic_kind == "catalog":
            sid = value.get("segment_id")
            if sid:
                self.labels[sid] = value.get("label", "")
                self.paths[sid] = value.get("tier_path", [sid])
            return
        user = value["user_id"]
        self.assignment[user] = value["segment_id"]
        self.labels.setdefault(value["segment_id"], value.get("label", ""))
        self.paths[value["segment_id"]] = value.get("tier_path", [value["segment_id"]])
        self.changes += 1
        now = time.monotonic()
        self.recent.append(now)
        self.last_change = now
        emitted = _ms(value["emitted_at"])
        with feed.lock:
            sends = feed.sent_at.get(user, [])
            i = bisect.bisect_right(sends, emitted)
            if i:
                self.freshness_ms.append(emitted - sends[i - 1])

    def rate(self, window_s: float = 5.0) -> float:
        cutoff = time.monotonic() - window_s
        return sum(1 for t in self.recent if t >= cutoff) / window_s

    def sizes(self) -> Counter[str]:
        return Counter(self.assignment.values())


def _percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _records(args: argparse.Namespace, settings: Settings, workdir: Path
             ) -> tuple[Iterator[tuple[bytes, bytes | None]], int | None, dict[str, str] | None]:
    """The records to stream, their count when known, and the personas (synthetic only)."""
    if args.file:
        from segstream_services.source_args import read_mapped

        events = read_mapped(args)[0]
        return ((str(e["user_id"]).encode(), json.dumps(e).encode()) for e in events), \
            len(events), None
    from segstream.synthetic import SyntheticStream

    stream = SyntheticStream(users=args.users, days=args.days, seed=args.seed,
                             end_ms=int(time.time() * 1000), malformed=args.malformed,
                             timezone=settings.ingest.timezone)
    stream.write_truth(workdir / "personas.json")
    return stream.records(), None, stream.truth()


def _render(view: View, feed: Feed, started: float, run: str, lag: int | None) -> Group:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    sizes = view.sizes()
    table = Table(expand=True, title="segments (fine ids, most users first)")
    for col in ("segment", "tier path", "label", "users"):
        table.add_column(col)
    for sid, n in sizes.most_common(14):
        table.add_row(sid, " › ".join(view.paths.get(sid, [sid])), view.labels.get(sid, ""),
                      str(n))
    total = f"/{feed.total:,}" if feed.total else ""
    status = (f"run {run}  |  {time.monotonic() - started:5.0f}s  |  sent {feed.sent:,}{total}"
              f"{' (done)' if feed.done else ''}  |  ingest lag {lag if lag is not None else '?'}"
              f"  |  users assigned {len(view.assignment):,}  |  segment changes "
              f"{view.changes:,} ({view.rate():.1f}/s)")
    if feed.error:
        status += f"\nproducer failed: {feed.error}"
    return Group(Panel(status, title="segstream demo"), table)


class LagProbe:
    """Records of the events topic not yet committed by the run's ingest consumer group
    (a consumer that never subscribes, so it reads the group's offsets without joining)."""

    def __init__(self, clients: KafkaClients, group_id: str, topic: str) -> None:
        self.consumer = clients.consumer(group_id=group_id)
        self.topic = topic
        self.parts: list = []  # TopicPartitions, found once the topic has metadata

    def lag(self) -> int | None:
        from kafka import TopicPartition

        try:
            if not self.parts:
                found = self.consumer.partitions_for_topic(self.topic) or []
                self.parts = [TopicPartition(self.topic, p) for p in sorted(found)]
                if not self.parts:
                    return None
            ends = self.consumer.end_offsets(self.parts)
            return sum(end - (self.consumer.committed(tp) or 0) for tp, end in ends.items())
        except Exception:  # a transient broker hiccup only blanks the lag column
            return None

    def close(self) -> None:
        self.consumer.close()


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from segstream_services.dev import localinfra

    console = Console()
    run = time.strftime("demo-%Y%m%d-%H%M%S")
    workdir = settings.local.home / "demo" / run
    workdir.mkdir(parents=True, exist_ok=True)
    with console.status("bringing up Kafka and Redis"):
        started_infra = localinfra.up(settings)
    console.print("infrastructure: " + ", ".join(
        f"{n} {'started' if s else 'already running'}" for n, s in started_infra.items()))

    topics = settings.topics.model_copy(update={
        name: f"segstream.{run}.{suffix}" for name, suffix in
        (("events", "events"), ("segments", "segments"), ("dlq", "events.dlq"),
         ("catalog", "catalog"))})
    run_settings = settings.model_copy(update={
        "topics": topics,
        "redis": settings.redis.model_copy(update={"key_prefix": run}),
        "segmenter": settings.segmenter.model_copy(update={"k": args.k}),
    })
    run_settings = run_settings.model_copy(update={
        "ingest": settings.ingest.model_copy(update={"group_id": f"segstream-ingest-{run}"})})
    clients = KafkaClients(settings.kafka)
    _create_topics(clients, topics)

    ports = {name: _free_port() for name in SERVICES}
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "SEGSTREAM_TOPICS__EVENTS": topics.events,
           "SEGSTREAM_TOPICS__SEGMENTS": topics.segments,
           "SEGSTREAM_TOPICS__DLQ": topics.dlq,
           "SEGSTREAM_TOPICS__CATALOG": topics.catalog,
           "SEGSTREAM_REDIS__KEY_PREFIX": run,
           "SEGSTREAM_INGEST__GROUP_ID": run_settings.ingest.group_id,
           "SEGSTREAM_SEGMENTER__K": str(args.k),
           **{f"SEGSTREAM_{n.upper()}__METRICS_PORT": str(p) for n, p in ports.items()}}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    # SIGTERM (e.g. from a supervisor or `timeout`) cleans up exactly like Ctrl-C
    signal.signal(signal.SIGTERM, _raise_interrupt)
    stop = threading.Event()
    feed = Feed()
    view = View()
    interrupted = False
    t0 = time.monotonic()
    try:
        for name in SERVICES:
            log = (workdir / f"{name}.log").open("wb")
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "segstream_services.cli", "run", name], env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        console.print("services: " + ", ".join(
            f"{n} (pid {p.pid}, metrics http://127.0.0.1:{ports[n]}/metrics)"
            for n, p in procs.items()) + f"\nlogs: {workdir}")
        records, feed.total, truth = _records(args, run_settings, workdir)
        producer = threading.Thread(target=_produce, args=(clients, topics.events, records,
                                                           args.rate, feed, stop), daemon=True)
        producer.start()
        watcher = clients.consumer(topics.segments, topics.catalog, group_id=None,
                                   value_deserializer=lambda v: json.loads(v))
        probe = LagProbe(clients, run_settings.ingest.group_id, topics.events)
        lag: int | None = None
        last_lag = 0.0
        with Live(_render(view, feed, t0, run, lag), console=console,
                  refresh_per_second=4) as live:
            while True:
                for tp, batch in watcher.poll(timeout_ms=250, max_records=2_000).items():
                    kind = "catalog" if tp.topic == topics.catalog else "segments"
                    for record in batch:
                        view.take(kind, record.value, feed)
                if time.monotonic() - last_lag > 1.0:
                    lag, last_lag = probe.lag(), time.monotonic()
                live.update(_render(view, feed, t0, run, lag))
                dead = [n for n, p in procs.items() if p.poll() is not None]
                if dead:
                    raise InfraError(f"service {dead[0]} exited early; see "
                                     f"{workdir / (dead[0] + '.log')}")
                quiet = time.monotonic() - view.last_change
                if (feed.done and lag == 0 and view.assignment and quiet > args.settle) \
                        or time.monotonic() - t0 > args.max_seconds:
                    break
        watcher.close()
        probe.close()
    except KeyboardInterrupt:
        interrupted = True
        console.print("interrupted: stopping the services")
    finally:
        stop.set()
        _stop_services(procs, console)
        admin = clients.admin()
        try:
            admin.delete_topics([topics.events, topics.segments, topics.dlq, topics.catalog])
        except Exception as exc:  # leftovers are harmless; say so rather than fail
            console.print(f"could not delete the run's topics: {exc}")
        finally:
            admin.close()
        if any(started_infra.values()) and not args.keep_infra:
            localinfra.down(settings)
            console.print("infrastructure stopped (the demo started it)")
    if interrupted:
        return 130
    console.print()
    _summary(console, view, feed, truth, t0)
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _create_topics(clients: KafkaClients, topics: TopicSettings) -> None:
    """Create the run's topics and wait until their partitions show in metadata (a
    consumer that subscribes earlier waits minutes for its next metadata refresh)."""
    from segstream.kafka_io import describe

    admin = clients.admin()
    try:
        ensure_topics(admin, topic_specs(topics))
        names = [s.name for s in topic_specs(topics)]
        deadline = time.monotonic() + 30
        while len(describe(admin, names)) < len(names):
            if time.monotonic() > deadline:
                raise InfraError("the demo's topics did not appear in metadata in 30 s")
            time.sleep(0.2)
    finally:
        admin.close()


def _stop_services(procs: dict[str, subprocess.Popen[bytes]], console: Console) -> None:
    """SIGTERM in pipeline order, then wait; SIGKILL whatever ignores it for 20 s."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _summary(console: Console, view: View, feed: Feed, truth: dict[str, str] | None,
             t0: float) -> None:
    from rich.table import Table
    from sklearn.metrics import adjusted_rand_score

    sizes = view.sizes()
    table = Table(title="segstream demo: final segments")
    for col in ("segment", "tier path", "label", "users", "top persona (share)"):
        table.add_column(col)
    personas: dict[str, Counter[str]] = {}
    for user, sid in view.assignment.items():
        if truth and user in truth:
            personas.setdefault(sid, Counter())[truth[user]] += 1
    for sid, n in sizes.most_common():
        top = personas.get(sid)
        share = (f"{top.most_common(1)[0][0]} ({top.most_common(1)[0][1] / n:.0%})"
                 if top else "-")
        table.add_row(sid, " › ".join(view.paths.get(sid, [sid])), view.labels.get(sid, ""),
                      str(n), share)
    console.print(table)
    lines = []
    if truth:
        users = [u for u in view.assignment if u in truth and truth[u] != "bot"]
        if len(users) > 1:
            ari = adjusted_rand_score([truth[u] for u in users],
                                      [view.assignment[u] for u in users])
            lines.append(f"adjusted Rand index vs the {len(set(truth.values()))} personas: "
                         f"{ari:.3f} over {len(users):,} users")
    produce_s = max(1e-9, feed.finished - feed.started)
    lines.append(f"events streamed: {feed.sent:,} in {produce_s:.1f}s "
                 f"({feed.sent / produce_s:,.0f} events/s offered); whole run "
                 f"{time.monotonic() - t0:.0f}s")
    p50, p99 = _percentile(view.freshness_ms, 0.5), _percentile(view.freshness_ms, 0.99)
    if p50 is not None:
        lines.append(f"freshness (user's latest event sent -> segment change published), "
                     f"over {len(view.freshness_ms):,} changes: p50 {p50 / 1000:.2f}s, "
                     f"p99 {p99 / 1000:.2f}s")  # type: ignore[operator]
    lines.append(f"segment changes: {view.changes:,}; users assigned: "
                 f"{len(view.assignment):,}")
    if feed.error:
        lines.append(f"producer error: {feed.error}")
    for line in lines:
        console.print(line)
