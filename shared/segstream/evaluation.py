"""Judging segmentations by what they do for a recommender, on a temporal split.

Profiles are built from events before the split time T; the interactions of the next
period are the truth. A segmentation becomes a recommender by ranking, for each segment,
the items its members liked before T (segment popularity), topped up from global
popularity; users are never recommended items they already had before T.

Metrics: HR@k (share of users with at least one hit), NDCG@k (binary relevance), and
catalogue coverage (share of items seen before T that anyone is recommended).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import adjusted_rand_score, davies_bouldin_score, silhouette_score

from segstream.events import Event


@dataclass(frozen=True)
class Split:
    """Events before ``split_ms`` (history) and in ``[split_ms, end_ms)`` (truth period)."""

    history: list[Event]
    future: list[Event]
    split_ms: int
    end_ms: int


def temporal_split(events: Iterable[Event], split_ms: int, horizon_ms: int | None = None
                   ) -> Split:
    """Split events at ``split_ms``; the truth period lasts ``horizon_ms`` (default: to the end)."""
    history, future = [], []
    end = split_ms + horizon_ms if horizon_ms else math.inf
    for event in events:
        if event.ts_ms < split_ms:
            history.append(event)
        elif event.ts_ms < end:
            future.append(event)
    last = max((e.ts_ms for e in future), default=split_ms)
    return Split(history, future, split_ms, int(end) if end != math.inf else last + 1)


def is_positive(event: Event, min_rating: float) -> bool:
    """An interaction that counts as liking the item: any event, but ratings below the bar."""
    return event.rating is None or event.rating >= min_rating


def truth(split: Split, min_rating: float) -> dict[str, set[str]]:
    """Per user with history: the new items (not had before T) liked in the truth period."""
    seen = seen_items(split.history)
    out: dict[str, set[str]] = defaultdict(set)
    for event in split.future:
        if (event.user_id in seen and is_positive(event, min_rating)
                and event.item_id not in seen[event.user_id]):
            out[event.user_id].add(event.item_id)
    return dict(out)


def seen_items(events: Iterable[Event]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for event in events:
        out[event.user_id].add(event.item_id)
    return dict(out)


def item_ranking(events: Iterable[Event], min_rating: float) -> list[str]:
    """Items by number of positive interactions, most first (ties: item id, for determinism)."""
    counts = Counter(e.item_id for e in events if is_positive(e, min_rating))
    return [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def recommend(rankings: Sequence[Sequence[str]], exclude: set[str], k: int) -> list[str]:
    """The first ``k`` items over the rankings in order, skipping excluded and repeated ones."""
    out: list[str] = []
    taken = set(exclude)
    for ranking in rankings:
        for item in ranking:
            if item not in taken:
                out.append(item)
                taken.add(item)
                if len(out) == k:
                    return out
    return out


def segment_recommendations(history: Sequence[Event], assignment: Mapping[str, Hashable],
                            users: Iterable[str], k: int, min_rating: float
                            ) -> dict[str, list[str]]:
    """Top-``k`` per user from their segment's popular items, topped up from global ones."""
    by_segment: dict[Hashable, list[Event]] = defaultdict(list)
    for event in history:
        if event.user_id in assignment:
            by_segment[assignment[event.user_id]].append(event)
    seg_rank = {seg: item_ranking(evts, min_rating) for seg, evts in by_segment.items()}
    global_rank = item_ranking(history, min_rating)
    seen = seen_items(history)
    return {
        user: recommend([seg_rank.get(assignment.get(user), []), global_rank],
                        seen.get(user, set()), k)
        for user in users
    }


class SegmentRecommender:
    """``segment_recommendations`` for many segmentations of the same history: the
    per-user positive counts are gathered once, so each segmentation costs O(users ×
    items per user) instead of a pass over every event."""

    def __init__(self, history: Sequence[Event], min_rating: float) -> None:
        self.per_user: dict[str, Counter[str]] = defaultdict(Counter)
        for event in history:
            if is_positive(event, min_rating):
                self.per_user[event.user_id][event.item_id] += 1
        self.global_rank = item_ranking(history, min_rating)
        self.seen = seen_items(history)

    def __call__(self, assignment: Mapping[str, Hashable], users: Iterable[str], k: int
                 ) -> dict[str, list[str]]:
        totals: dict[Hashable, Counter[str]] = defaultdict(Counter)
        for user, counts in self.per_user.items():
            if user in assignment:
                totals[assignment[user]].update(counts)
        seg_rank = {seg: [item for item, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]
                    for seg, c in totals.items()}
        return {user: recommend([seg_rank.get(assignment.get(user), []), self.global_rank],
                                self.seen.get(user, set()), k)
                for user in users}


def popularity_recommendations(history: Sequence[Event], users: Iterable[str], k: int,
                               min_rating: float) -> dict[str, list[str]]:
    """Global popularity: the same ranking for everyone, minus what each user already had."""
    global_rank = item_ranking(history, min_rating)
    seen = seen_items(history)
    return {user: recommend([global_rank], seen.get(user, set()), k) for user in users}


@dataclass(frozen=True)
class RecScores:
    hr: float
    ndcg: float
    coverage: float
    users: int


def per_user_scores(recs: Mapping[str, Sequence[str]], truth_sets: Mapping[str, set[str]],
                    k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's hit (0/1) and NDCG@k, in ``truth_sets``' order."""
    hits, ndcgs = [], []
    for user, relevant in truth_sets.items():
        ranked = list(recs.get(user, []))[:k]
        gains = [1.0 if item in relevant else 0.0 for item in ranked]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
        hits.append(1.0 if any(gains) else 0.0)
        ndcgs.append(dcg / ideal if ideal else 0.0)
    return np.asarray(hits), np.asarray(ndcgs)


def coverage(recs: Mapping[str, Sequence[str]], users: Iterable[str], catalogue_size: int,
             k: int) -> float:
    """Share of the catalogue that the top-``k`` lists of ``users`` recommend."""
    recommended = {item for user in users for item in list(recs.get(user, []))[:k]}
    return len(recommended) / catalogue_size if catalogue_size else 0.0


def score(recs: Mapping[str, Sequence[str]], truth_sets: Mapping[str, set[str]],
          catalogue_size: int, k: int) -> RecScores:
    """HR@k and NDCG@k over the users in ``truth_sets``, and catalogue coverage."""
    hits, ndcgs = per_user_scores(recs, truth_sets, k)
    return RecScores(
        hr=float(hits.mean()) if len(hits) else 0.0,
        ndcg=float(ndcgs.mean()) if len(ndcgs) else 0.0,
        coverage=coverage(recs, truth_sets, catalogue_size, k),
        users=len(hits),
    )


def paired_ratio(method: np.ndarray, reference: np.ndarray, draws: int = 2_000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """mean(method) / mean(reference) over the same users (or user-split pairs), with a
    paired bootstrap interval: the users are resampled with replacement ``draws`` times
    and both means taken over each resample. Returns (ratio, low, high); NaN where the
    reference's mean is 0."""
    a, b = np.asarray(method, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two equal 1-d arrays, got {a.shape} and {b.shape}")
    if not len(a) or b.mean() == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(draws, len(a)))
    num, den = a[picks].mean(axis=1), b[picks].mean(axis=1)
    ratios = num[den > 0] / den[den > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(a.mean() / b.mean()), float(low), float(high)


@dataclass(frozen=True)
class ClusterScores:
    silhouette: float
    davies_bouldin: float


def cluster_scores(vectors: np.ndarray, labels: Sequence[Hashable], seed: int = 0,
                   sample: int = 5_000) -> ClusterScores:
    """Silhouette and Davies–Bouldin of ``labels`` in the space ``vectors`` are given in."""
    labels_arr = np.asarray([str(x) for x in labels])
    if len(set(labels_arr)) < 2:
        return ClusterScores(float("nan"), float("nan"))
    return ClusterScores(
        silhouette=float(silhouette_score(vectors, labels_arr, sample_size=min(sample,
                                          len(labels_arr)), random_state=seed)),
        davies_bouldin=float(davies_bouldin_score(vectors, labels_arr)),
    )


def stability(before: Mapping[str, Hashable], after: Mapping[str, Hashable]) -> float:
    """Adjusted Rand index of two segmentations over the users they share (1 = same)."""
    common = sorted(set(before) & set(after))
    if len(common) < 2:
        return float("nan")
    return float(adjusted_rand_score([str(before[u]) for u in common],
                                     [str(after[u]) for u in common]))
