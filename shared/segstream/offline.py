"""One process, no Kafka or Redis: events → profiles → feature texts → embeddings → segments.

The same functions as the streaming path do every step: ``features.increments`` /
``UserState.apply`` / ``summarize`` build profiles, ``feature_text.render`` writes the
texts, ``encoding.Encoder`` embeds them and ``segmentation.OnlineSegmenter.fit`` clusters.
Only duplicate event ids are dropped here by a set instead of the Redis script.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import silhouette_score

from segstream.config import IngestSettings
from segstream.encoding import Encoder
from segstream.events import Event
from segstream.feature_text import render
from segstream.features import Features, UserState, increments, summarize
from segstream.segmentation import Assignment, Observation, OnlineSegmenter, SegConfig


@dataclass
class Profile:
    """One user's state after the events given, with its features and feature text."""

    user_id: str
    state: UserState
    features: Features
    text: str
    events: int


def build_profiles(events: Iterable[Event], settings: IngestSettings,
                   until_ms: int | None = None) -> dict[str, Profile]:
    """Profiles from ``events`` (any order; applied in event-time order) before ``until_ms``."""
    ordered = sorted((e for e in events if until_ms is None or e.ts_ms < until_ms),
                     key=lambda e: (e.ts_ms, e.event_id))
    states: dict[str, UserState] = {}
    counts: dict[str, int] = {}
    seen: set[str] = set()
    for event in ordered:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        state = states.setdefault(event.user_id, UserState())
        if state.apply(increments(event, settings), settings) == "applied":
            counts[event.user_id] = counts.get(event.user_id, 0) + 1
    profiles = {}
    for user, state in states.items():
        if not counts.get(user):
            continue
        features = summarize(state, settings)
        profiles[user] = Profile(user, state, features, render(features, settings),
                                 counts[user])
    return profiles


class TextEmbedder:
    """Embeds texts once each: identical texts (common across users and splits) share a row."""

    def __init__(self, encoder: Encoder, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str],
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self.cache})
        step = self.batch_size * 8
        for start in range(0, len(missing), step):
            chunk = missing[start:start + step]
            for text, vec in zip(chunk, self.encoder.encode(chunk, self.batch_size),
                                 strict=True):
                self.cache[text] = vec
            if progress:
                progress(len(chunk))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.cache[t] for t in texts])


@dataclass
class Segmentation:
    """Users, their embeddings and assignments, and the fitted segmenter (catalog, labels)."""

    users: list[str]
    vectors: np.ndarray
    assignments: list[Assignment]
    segmenter: OnlineSegmenter

    def labels(self) -> dict[str, str]:
        return {a.key: a.segment_id for a in self.assignments}


def segment_profiles(profiles: dict[str, Profile], embed: TextEmbedder, config: SegConfig,
                     now_ms: int) -> Segmentation:
    """Embed every profile's text and fit the segmenter on all of them at once."""
    users = sorted(profiles)
    vectors = embed([profiles[u].text for u in users])
    segmenter = OnlineSegmenter(config)
    batch = [Observation(u, vectors[i], profiles[u].text) for i, u in enumerate(users)]
    assignments = segmenter.fit(batch, now_ms)
    return Segmentation(users, vectors, assignments, segmenter)


def choose_k(vectors: np.ndarray, candidates: Sequence[int], seed: int = 0,
             min_share: float = 0.01) -> tuple[int, dict[int, tuple[float, float]]]:
    """The documented k rule: the k with the best cosine silhouette among ``candidates``
    whose smallest cluster holds at least ``min_share`` of the users; returns k and, per
    candidate, (silhouette, inertia) for the report."""
    from sklearn.cluster import KMeans

    scores: dict[int, tuple[float, float]] = {}
    best, best_sil = None, -2.0
    n = len(vectors)
    for k in candidates:
        if not 2 <= k < n:
            continue
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(vectors)
        sil = float(silhouette_score(vectors, km.labels_, metric="cosine",
                                     sample_size=min(n, 4_000), random_state=seed))
        scores[k] = (sil, float(km.inertia_))
        smallest = np.bincount(km.labels_, minlength=k).min() / n
        if smallest >= min_share and sil > best_sil:
            best, best_sil = k, sil
    if best is None:
        best = min(scores) if scores else max(2, min(candidates))
    return best, scores
