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
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from segstream.config import Settings, TopicSettings
from segstream.errors import InfraError
from segstream.kafka_client import KafkaClients, kafka_clients
from segstream.kafka_io import ensure_topics, topic_specs
from segstream_services.dev.demo_view import Feed, LagProbe, View, produce, render, summary

if TYPE_CHECKING:
    from rich.console import Console

SERVICES = ("ingest", "encoder", "segmenter")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _records(args: argparse.Namespace, settings: Settings, workdir: Path
             ) -> tuple[Iterator[tuple[bytes, bytes | None]], int | None, dict[str, str] | None]:
    """The records to stream, their count when known, and the personas (synthetic only)."""
    if args.file:
        from segstream_services.source_args import read_mapped

        events = read_mapped(args, progress=True)[0]
        return ((str(e["user_id"]).encode(), json.dumps(e).encode()) for e in events), \
            len(events), None
    from segstream.synthetic import SyntheticStream

    stream = SyntheticStream(users=args.users, days=args.days, seed=args.seed,
                             end_ms=int(time.time() * 1000), malformed=args.malformed,
                             timezone=settings.ingest.timezone)
    stream.write_truth(workdir / "personas.json")
    return stream.records(), None, stream.truth()


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

    names = {name: value for name, value in settings.topics.model_dump().items()
             if isinstance(value, str)}  # every topic of the run gets a name of its own
    topics = settings.topics.model_copy(update={
        name: f"segstream.{run}.{value.removeprefix('segstream.')}"
        for name, value in names.items()})
    run_settings = settings.model_copy(update={
        "topics": topics,
        "redis": settings.redis.model_copy(update={"key_prefix": run}),
        "segmenter": settings.segmenter.model_copy(update={"k": args.k}),
    })
    run_settings = run_settings.model_copy(update={
        "ingest": settings.ingest.model_copy(update={"group_id": f"segstream-ingest-{run}"})})
    clients = kafka_clients(settings.kafka)
    _create_topics(clients, topics)

    ports = {name: _free_port() for name in SERVICES}
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           **{f"SEGSTREAM_TOPICS__{name.upper()}": getattr(topics, name) for name in names},
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
    views = ""
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
        producer = threading.Thread(target=produce, args=(clients, topics.events, records,
                                                           args.rate, feed, stop), daemon=True)
        producer.start()
        watcher = clients.consumer(topics.segments, topics.catalog, group_id=None)
        probe = LagProbe(clients, run_settings.ingest.group_id, topics.events)
        lag: int | None = None
        last_lag = 0.0
        with Live(render(view, feed, t0, run, lag), console=console,
                  refresh_per_second=4) as live:
            while True:
                for record in watcher.poll(250, 2_000):
                    if record.value is None:  # a tombstone (a forgotten user)
                        continue
                    kind = "catalog" if record.topic == topics.catalog else "segments"
                    view.take(kind, json.loads(record.value), feed)
                if time.monotonic() - last_lag > 1.0:
                    lag, last_lag = probe.lag(), time.monotonic()
                live.update(render(view, feed, t0, run, lag))
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
        views = _views_line(run_settings)
    except KeyboardInterrupt:
        interrupted = True
        console.print("interrupted: stopping the services")
    finally:
        stop.set()
        _stop_services(procs, console)
        admin = clients.admin()
        try:
            admin.delete_topics([getattr(topics, name) for name in names])
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
    summary(console, view, feed, truth, t0)
    console.print(views)
    return 0


def _views_line(settings: Settings) -> str:
    """What the segments were built from: the views, their weights, the items embedded and
    how far the feature-text view lags the interest view (from the users' ``emb``)."""
    import numpy as np

    from segstream.keys import Keys
    from segstream.redis_io import redis_client

    client = redis_client(settings.redis)
    keys = Keys(settings.redis.key_prefix)
    items = sum(1 for _ in client.scan_iter(match=keys.item_vec("*", "*"), count=1_000))
    lags = []
    for key in client.scan_iter(match=keys.emb("*"), count=1_000):
        interest_ms, text_ms = client.hmget(key, ["interest_ms", "text_ms"])
        if interest_ms and text_ms and int(interest_ms) > 0:
            lags.append(max(0, int(interest_ms) - int(text_ms)) / 1000)
    client.close()
    weights = settings.interest.view_weights
    line = (f"views: interest {weights.get('interest', 0):g} + feature text "
            f"{weights.get('text', 0):g}; {items:,} items embedded (each once); users' "
            "interest vectors computed without a transformer pass")
    if lags:
        line += (f"; the feature-text view lags the interest view by p50 "
                 f"{np.median(lags):.1f}s, max {max(lags):.1f}s "
                 f"(re-embedded at most every {settings.encoder.text_min_interval_s:g}s)")
    return line


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
