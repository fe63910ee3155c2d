"""`segstream eval`: segstream's segments against global popularity and two KMeans baselines.

For every split time T (one, several, or a rolling series) the events before T build the
profiles, and the new items each user liked in ``[T, T + horizon)`` are the truth. Every
segmentation (same k, same seed) becomes a segment-popularity recommender; global
popularity is the floor. Stability is the adjusted Rand index between the segmentation
at T and the one at ``T - stability_days`` over the users present at both. Results are
pooled over splits (HR/NDCG per user-split pair) and reported as mean ± std over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import mean, pstdev

import numpy as np

from segstream.baselines import category_matrix, kmeans_labels, rfm_matrix
from segstream.config import IngestSettings
from segstream.evaluation import (
    cluster_scores,
    popularity_recommendations,
    score,
    segment_recommendations,
    stability,
    temporal_split,
    truth,
)
from segstream.events import Event
from segstream.offline import TextEmbedder, build_profiles, segment_profiles
from segstream.segmentation import SegConfig

DAY_MS = 86_400_000
METHODS = ("global popularity", "segstream (text embeddings)", "RFM + KMeans",
           "category histogram + KMeans")
METRICS = ("hr", "ndcg", "coverage", "silhouette", "davies_bouldin", "stability")


@dataclass
class EvalConfig:
    split_ms: list[int]
    horizon_days: float = 180.0
    stability_days: float | None = None  # default: the horizon
    k: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    min_rating: float = 4.0
    top_n: int = 10
    min_users_per_k: int = 3


@dataclass
class MethodResult:
    """Per seed, each metric pooled over the splits."""

    per_seed: dict[int, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, tuple[float, float]]:
        out = {}
        for metric in METRICS:
            values = [v[metric] for v in self.per_seed.values() if not math.isnan(v[metric])]
            out[metric] = (mean(values), pstdev(values)) if values else (math.nan, math.nan)
        return out


@dataclass
class EvalResult:
    config: EvalConfig
    splits_used: list[int]
    users_evaluated: int
    methods: dict[str, MethodResult]

    def to_json(self) -> dict:
        return {
            "config": asdict(self.config),
            "splits_used_ms": self.splits_used,
            "user_split_pairs": self.users_evaluated,
            "methods": {
                name: {metric: {"mean": m, "std": s}
                       for metric, (m, s) in result.summary().items()}
                | {"per_seed": result.per_seed}
                for name, result in self.methods.items()
            },
        }


@dataclass
class _Acc:
    """Sums over splits for one method and seed."""

    hits: float = 0.0
    ndcg: float = 0.0
    users: int = 0
    coverage: list[float] = field(default_factory=list)
    silhouette: list[float] = field(default_factory=list)
    db: list[float] = field(default_factory=list)
    stability: list[float] = field(default_factory=list)

    def add(self, recs: dict, truth_sets: dict, catalogue: int, k: int) -> None:
        s = score(recs, truth_sets, catalogue, k)
        self.hits += s.hr * s.users
        self.ndcg += s.ndcg * s.users
        self.users += s.users
        self.coverage.append(s.coverage)

    def result(self) -> dict[str, float]:
        def avg(xs: list[float]) -> float:
            xs = [x for x in xs if not math.isnan(x)]
            return float(np.mean(xs)) if xs else math.nan

        return {"hr": self.hits / self.users if self.users else math.nan,
                "ndcg": self.ndcg / self.users if self.users else math.nan,
                "coverage": avg(self.coverage), "silhouette": avg(self.silhouette),
                "davies_bouldin": avg(self.db), "stability": avg(self.stability)}


def rolling_splits(events: Sequence[Event], count: int, horizon_days: float) -> list[int]:
    """``count`` split times evenly spaced from the 10th percentile of event time to the
    last time that still leaves a full horizon after it."""
    times = np.array(sorted(e.ts_ms for e in events))
    first = float(np.percentile(times, 10))
    last = float(times[-1]) - horizon_days * DAY_MS
    if count < 1 or last <= first:
        return [int(np.percentile(times, 80))]
    return [int(t) for t in np.linspace(first, last, count)]


@dataclass
class _Snapshot:
    """What every method needs of the users known at one time (seed-independent)."""

    at_ms: int
    profiles: dict
    rfm: tuple[list[str], np.ndarray]
    cat: tuple[list[str], np.ndarray]

    @classmethod
    def at(cls, events: Sequence[Event], at_ms: int, settings: IngestSettings) -> _Snapshot:
        history = [e for e in events if e.ts_ms < at_ms]
        return cls(at_ms, build_profiles(history, settings), rfm_matrix(history, at_ms),
                   category_matrix(history))

    def segmentations(self, embed: TextEmbedder, k: int, seed: int
                      ) -> dict[str, tuple[dict[str, str], np.ndarray, list[str]]]:
        """Labels, vectors and users of the three segmentations under ``seed``."""
        seg = segment_profiles(self.profiles, embed, SegConfig(k=k, seed=seed), self.at_ms)
        out = {"seg": (seg.labels(), seg.vectors, seg.users)}
        for name, (users, matrix) in (("rfm", self.rfm), ("cat", self.cat)):
            labels = kmeans_labels(matrix, k, seed)
            out[name] = ({u: str(x) for u, x in zip(users, labels, strict=True)}, matrix, users)
        return out


def run_eval(events: Sequence[Event], settings: IngestSettings, embed: TextEmbedder,
             config: EvalConfig, progress: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate every method on every split and seed."""
    horizon = int(config.horizon_days * DAY_MS)
    back = int((config.stability_days or config.horizon_days) * DAY_MS)
    accs = {name: {seed: _Acc() for seed in config.seeds} for name in METHODS}
    users_min = config.k * config.min_users_per_k
    used, pairs = [], 0
    for split_ms in config.split_ms:
        split = temporal_split(events, split_ms, horizon)
        truth_sets = truth(split, config.min_rating)
        if not truth_sets:
            continue
        catalogue = len({e.item_id for e in split.history})
        users = sorted(truth_sets)
        pop = popularity_recommendations(split.history, users, config.top_n, config.min_rating)
        now = _Snapshot.at(events, split_ms, settings)
        if len(now.profiles) < users_min:
            continue
        earlier = _Snapshot.at(events, split_ms - back, settings)
        for seed in config.seeds:
            current = now.segmentations(embed, config.k, seed)
            previous = (earlier.segmentations(embed, config.k, seed)
                        if len(earlier.profiles) >= users_min else None)
            accs[METHODS[0]][seed].add(pop, truth_sets, catalogue, config.top_n)
            for key, name in (("seg", METHODS[1]), ("rfm", METHODS[2]), ("cat", METHODS[3])):
                labels, vectors, members = current[key]
                recs = segment_recommendations(split.history, labels, users, config.top_n,
                                               config.min_rating)
                acc = accs[name][seed]
                acc.add(recs, truth_sets, catalogue, config.top_n)
                quality = cluster_scores(vectors, [labels[u] for u in members], seed)
                acc.silhouette.append(quality.silhouette)
                acc.db.append(quality.davies_bouldin)
                if previous is not None:
                    acc.stability.append(stability(previous[key][0], labels))
        used.append(split_ms)
        pairs += len(users)
        if progress:
            progress(f"split {len(used)}/{len(config.split_ms)}: {len(users)} users")
    methods = {name: MethodResult({seed: acc.result() for seed, acc in per_seed.items()
                                   if acc.users})
               for name, per_seed in accs.items()}
    for seed_results in methods[METHODS[0]].per_seed.values():  # not a segmentation
        for metric in ("silhouette", "davies_bouldin", "stability"):
            seed_results[metric] = math.nan
    return EvalResult(config, used, pairs, methods)
