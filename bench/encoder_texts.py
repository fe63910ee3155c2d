"""Realistic feature texts for the encoder benchmarks, from ingest's own code path.

The seeded persona stream (``segstream.synthetic``) is folded event by event into per-user
state (``segstream.features``) and rendered (``segstream.feature_text``) exactly as ingest
does. ``windows`` groups the stream into micro-batch windows of ``window_events``
consecutive events (100 events = a 100 ms window at 1,000 events/s) and yields, per
window, the final text of every user the window touched: what the dirty queue coalesces.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from segstream.config import IngestSettings
from segstream.events import event_from_dict
from segstream.feature_text import render
from segstream.features import UserState, increments, summarize
from segstream.synthetic import SyntheticStream


@dataclass(frozen=True)
class Window:
    events: int
    texts: dict[str, str]  # user id → feature text after the window


def windows(users: int = 1_000, days: int = 30, seed: int = 7, window_events: int = 100,
            max_events: int | None = None) -> Iterator[Window]:
    """Coalesced per-window texts of the synthetic stream (see the module docstring)."""
    settings = IngestSettings()
    allowed = frozenset(("view", "click", "cart", "purchase", "like", "share", "comment",
                         "play", "rate"))
    states: dict[str, UserState] = {}
    touched: set[str] = set()
    n = 0
    for n, raw in enumerate(SyntheticStream(users=users, days=days, seed=seed).events(), 1):
        event = event_from_dict(raw, allowed)
        states.setdefault(event.user_id, UserState()).apply(increments(event, settings),
                                                            settings)
        touched.add(event.user_id)
        if n % window_events == 0:
            yield Window(window_events, {u: render(summarize(states[u], settings), settings)
                                         for u in sorted(touched)})
            touched.clear()
        if max_events and n >= max_events:
            break
    if touched:
        yield Window(n % window_events, {u: render(summarize(states[u], settings), settings)
                                         for u in sorted(touched)})


def final_texts(users: int = 1_000, days: int = 30, seed: int = 7) -> dict[str, str]:
    """Each user's text at the end of the stream (one per user; for throughput runs)."""
    out: dict[str, str] = {}
    for window in windows(users, days, seed, window_events=10_000):
        out.update(window.texts)
    return out


def sample_texts(n: int, seed: int = 7) -> list[str]:
    """``n`` distinct realistic texts: users' texts at several points of their history."""
    seen: dict[str, None] = {}
    for window in windows(users=max(200, n // 4), days=30, seed=seed, window_events=2_000):
        for text in window.texts.values():
            seen.setdefault(text)
    texts = list(seen)
    step = max(1, len(texts) // n)
    return texts[::step][:n]
