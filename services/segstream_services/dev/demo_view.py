"""What ``segstream demo`` watches and shows: the background feed, the segment view,
the live panel and the closing summary (the orchestration is in ``demo``)."""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from segstream.kafka_client import KafkaClients, TopicPartition

if TYPE_CHECKING:
    from rich.console import Console, Group


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


def produce(clients: KafkaClients, topic: str, records: Iterable[tuple[bytes, bytes | None]],
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

    def take(self, topic_kind: str, value: dict[str, Any], feed: Feed) -> None:
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


def percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def render(view: View, feed: Feed, started: float, run: str, lag: int | None) -> Group:
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
        self.parts: list[TopicPartition] = []  # found once the topic has metadata

    def lag(self) -> int | None:
        try:
            if not self.parts:
                found = self.consumer.partitions_for(self.topic)
                self.parts = [TopicPartition(self.topic, p) for p in sorted(found)]
                if not self.parts:
                    return None
            ends = self.consumer.end_offsets(self.parts)
            return sum(end - (self.consumer.committed(tp) or 0) for tp, end in ends.items())
        except Exception:  # a transient broker hiccup only blanks the lag column
            return None

    def close(self) -> None:
        self.consumer.close()


def summary(console: Console, view: View, feed: Feed, truth: dict[str, str] | None,
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
    p50, p99 = percentile(view.freshness_ms, 0.5), percentile(view.freshness_ms, 0.99)
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
