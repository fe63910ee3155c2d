"""One process, no Kafka or Redis: events → profiles and interest vectors → views → segments.

The same functions as the streaming path do every step: ``features.increments`` /
``UserState.apply`` / ``summarize`` build profiles, ``feature_text.render`` writes the
texts, ``encoding.Encoder`` embeds them (and each distinct item text, once per model),
``interest.InterestAggregator`` builds the interest vectors and
``segmentation.OnlineSegmenter.fit`` clusters. Only duplicate event ids are dropped here
by a set instead of the Redis script.

The views: ``interest`` (the user's interest vector), ``text`` (the feature-text
embedding) and their combination, the concatenation of the L2-normalised views each
multiplied by its weight (``interest.view_weights``), so that squared distances add up
as ``sum(w_v ** 2 * |a_v - b_v| ** 2)``; a user without an interest vector has zeros in
that part (counted).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import silhouette_score

from segstream.config import IngestSettings, InterestSettings, ViewName
from segstream.encoding import Encoder
from segstream.errors import ConfigError
from segstream.events import Event
from segstream.feature_text import interest_summary, render
from segstream.features import Features, UserState, increments, summarize
from segstream.interest import InterestAggregator, catalogue_center, item_text
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


def _sorted_unique(events: Iterable[Event]) -> list[Event]:
    seen: set[str] = set()
    out = []
    for event in sorted(events, key=lambda e: (e.ts_ms, e.event_id)):
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out


def profiles_at(events: Iterable[Event], times: Sequence[int], settings: IngestSettings
                ) -> dict[int, dict[str, Profile]]:
    """``build_profiles(events, settings, until_ms=t)`` for every ``t`` in one pass."""
    ordered = _sorted_unique(events)
    states: dict[str, UserState] = {}
    counts: dict[str, int] = {}
    out: dict[int, dict[str, Profile]] = {}
    current: dict[str, Profile] = {}
    changed: set[str] = set()
    i = 0
    for t in sorted(set(times)):
        while i < len(ordered) and ordered[i].ts_ms < t:
            event = ordered[i]
            i += 1
            state = states.setdefault(event.user_id, UserState())
            if state.apply(increments(event, settings), settings) == "applied":
                counts[event.user_id] = counts.get(event.user_id, 0) + 1
                changed.add(event.user_id)
        for user in changed:
            features = summarize(states[user], settings)
            current[user] = Profile(user, copy.deepcopy(states[user]), features,
                                    render(features, settings), counts[user])
        changed.clear()
        out[t] = dict(current)
    return out


def item_texts(events: Iterable[Event], max_chars: int = 160) -> dict[str, str]:
    """Each item's text from its newest event that carries a title or category."""
    texts: dict[str, tuple[int, str]] = {}
    for e in events:
        text = item_text(e.title, e.category, max_chars=max_chars) \
            if (e.title or e.category) else None
        if text and (e.item_id not in texts or texts[e.item_id][0] <= e.ts_ms):
            texts[e.item_id] = (e.ts_ms, text)
    return {item: text for item, (_, text) in texts.items()}


def interest_at(events: Iterable[Event], times: Sequence[int], settings: InterestSettings,
                item_vectors: Mapping[str, np.ndarray]
                ) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, int]]:
    """Users' interest vectors from the events before each of ``times`` (one pass), and
    the aggregator's counts (embedded, fallback, no_vector, rejected items)."""
    center = catalogue_center(item_vectors.values()) if settings.center_items else None
    agg = InterestAggregator(settings, item_vectors, center)
    ordered = _sorted_unique(events)
    out: dict[int, dict[str, np.ndarray]] = {}
    current: dict[str, np.ndarray] = {}
    changed: set[str] = set()
    i = 0
    for t in sorted(set(times)):
        while i < len(ordered) and ordered[i].ts_ms < t:
            agg.observe(ordered[i])
            changed.add(ordered[i].user_id)
            i += 1
        current.update(agg.vectors(changed))
        changed.clear()
        out[t] = dict(current)
    return out, dict(agg.counts)


def center_users(matrix: np.ndarray) -> np.ndarray:
    """Subtract the mean of the (unit) rows that are not all zero: what every user shares
    (the template of the feature texts, the typical basket) stops dominating distances."""
    rows = np.linalg.norm(matrix, axis=1) > 0
    if not rows.any():
        return matrix
    out = matrix.copy()
    unit = matrix[rows] / np.linalg.norm(matrix[rows], axis=1, keepdims=True)
    out[rows] = unit - unit.mean(axis=0)
    return out


def combine_views(views: Sequence[tuple[np.ndarray, float]], center: bool = False
                  ) -> np.ndarray:
    """Concatenate the row-L2-normalised views (each first centred over the users, when
    ``center``), each multiplied by its weight."""
    parts = []
    for matrix, weight in views:
        if weight <= 0:
            continue
        if center:
            matrix = center_users(matrix)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        parts.append(weight * matrix / np.maximum(norms, 1e-12))
    if not parts:
        raise ConfigError("every view has weight 0; give at least one a positive weight")
    return np.hstack(parts)


def view_matrix(users: Sequence[str], vectors: Mapping[str, np.ndarray], dim: int
                ) -> tuple[np.ndarray, int]:
    """Rows of ``vectors`` in ``users`` order (zeros where a user has none) and how many
    users had none."""
    out = np.zeros((len(users), dim))
    missing = 0
    for i, u in enumerate(users):
        vec = vectors.get(u)
        if vec is None:
            missing += 1
        else:
            out[i] = vec
    return out, missing


def cache_file_name(encoder: Encoder) -> str:
    """``<text_version>-<device>-<dtype>.npz``: the vectors of one model computed one way."""
    dtype = str(encoder.dtype).removeprefix("torch.")
    return f"{encoder.text_version}-{encoder.device.type}-{dtype}.npz"


class TextEmbedder:
    """Embeds texts once each: identical texts (common across users and splits) share a row.

    With ``cache_dir``, vectors persist in ``<cache_dir>/<text_version>-<device>-<dtype>.npz``
    across runs (``save``), so a model embeds each item and feature text once. The device
    and dtype are in the name because they move the vectors enough to move a segmentation
    (README "Figures on another machine"): a cache never mixes them.
    """

    def __init__(self, encoder: Encoder, batch_size: int = 64,
                 cache_dir: str | Path | None = None) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.cache: dict[str, np.ndarray] = {}
        self.file = (Path(cache_dir) / cache_file_name(encoder)) if cache_dir else None
        self.loaded = 0
        if self.file is not None and self.file.is_file():
            with np.load(self.file, allow_pickle=False) as data:
                self.cache = dict(zip(data["texts"].tolist(), data["vectors"], strict=True))
            self.loaded = len(self.cache)

    def save(self) -> None:
        """Write the cache file (when there is one and it gained texts)."""
        if self.file is None or len(self.cache) == self.loaded:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self.cache)
        tmp = self.file.with_suffix(".tmp.npz")
        np.savez(tmp, texts=np.asarray(texts), vectors=np.stack([self.cache[t] for t in texts]))
        tmp.replace(self.file)
        self.loaded = len(self.cache)

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
    return segment_vectors(users, vectors, [profiles[u].text for u in users], config, now_ms)


def segment_vectors(users: Sequence[str], vectors: np.ndarray, texts: Sequence[str],
                    config: SegConfig, now_ms: int) -> Segmentation:
    """Fit the segmenter on one row per user; ``texts`` are what labels are drawn from."""
    segmenter = OnlineSegmenter(config)
    batch = [Observation(u, vectors[i], texts[i]) for i, u in enumerate(users)]
    assignments = segmenter.fit(batch, now_ms)
    return Segmentation(list(users), vectors, assignments, segmenter)


@dataclass
class Views:
    """Every view of the same users: the matrices, the label texts and what was missing."""

    users: list[str]
    interest: np.ndarray
    text: np.ndarray
    label_texts: list[str]
    no_interest: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def matrix(self, weights: Mapping[str, float] | Mapping[ViewName, float]) -> np.ndarray:
        """The combination under ``weights`` (``{"interest": w, "text": w}``)."""
        return combine_views([(self.interest, weights.get("interest", 0.0)),
                              (self.text, weights.get("text", 0.0))])


def label_text(profile: Profile, settings: IngestSettings) -> str:
    """What a segment label is drawn from: the interest part of the profile's text."""
    return interest_summary(profile.features, settings) or profile.text


def item_table(encoder: Encoder, text_vectors: dict[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
    """The item vectors the interest view uses under ``encoder``: the texts' vectors, or,
    when its model directory carries item factors (``segstream.item_factors``), each
    item's ``text ⊕ weight · factor`` (as the encoder service composes them)."""
    factors = encoder.item_factors
    return text_vectors if factors is None else factors.apply(text_vectors, encoder.dim)


def build_views(events: Sequence[Event], profiles: dict[str, Profile], embed: TextEmbedder,
                ingest: IngestSettings, interest: InterestSettings,
                progress: Callable[[str, int, int], None] | None = None) -> Views:
    """Both views of every profiled user from ``events`` (items embedded once each)."""
    users = sorted(profiles)
    items = item_texts(events, interest.item_text_chars)
    texts = sorted(set(items.values()))
    step = (lambda n: progress("item texts", n, len(texts))) if progress else None
    table = dict(zip(texts, embed(texts, step), strict=True)) if texts else {}
    item_vectors = item_table(embed.encoder, {item: table[text] for item, text in items.items()})
    end = max(e.ts_ms for e in events) + 1
    by_time, counts = interest_at(events, [end], interest, item_vectors)
    feature_texts = [profiles[u].text for u in users]
    step = ((lambda n: progress("feature texts", n, len(set(feature_texts))))
            if progress else None)
    text_matrix = embed(feature_texts, step)
    inter, missing = view_matrix(users, by_time[end], embed.encoder.item_dim)
    return Views(users, inter, text_matrix, [label_text(profiles[u], ingest) for u in users],
                 missing, counts)


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
