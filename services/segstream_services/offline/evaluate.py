"""`segstream eval`: segstream's views against global popularity and three KMeans baselines.

For every split time T the events before T build the profiles and interest vectors, and
the new items each user liked in ``[T, T + horizon)`` are the truth. Every segmentation
(same k, same seed) becomes a segment-popularity recommender; global popularity is the
floor. Stability is the adjusted Rand index between the segmentation at T and the one at
``T - d`` for each ``d`` in ``stability_days`` (default 7 and 30), same method, model,
k and seed, over the users present at both: each is a fresh fit, so for segstream's views
it also counts what a refit reshuffles. The running segmenter refits nothing at T: the
``ONLINE`` row is the interest view fitted 7 days before T and carried to T by the
segmenter's own online step, so its HR/NDCG are what subscribers get and its stability is
how much the live segments move (against fresh fits at ``T - d``). HR and NDCG are
pooled over the user-split pairs; each figure is the mean ± std over seeds.

Tuning discipline: the interest half-life, item centring, the text weight of the
combination (0: the interest vector alone), the co-occurrence weight of the smoothed
view and the hybrid view's β are either the settings' values (``DEFAULT_COOC_WEIGHT``,
``DEFAULT_HYBRID_WEIGHT`` for the last two) or, with
``tune_until``, chosen on the splits whose whole truth period ends before ``tune_until``
(by mean NDCG@10 over the k values, seed 0); only the splits at or after ``tune_until``
are reported. The tuning log also holds probes that are never chosen (PCA-reduced
interest view, segmentations carried forward online) and the baselines on those splits.
The search and its grid are in ``tuning``, the rows each method clusters in ``eval_data``,
the method names in ``methods``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import mean, pstdev

import numpy as np

from segstream.baselines import kmeans_labels
from segstream.config import IngestSettings, InterestSettings, SegmenterSettings
from segstream.evaluation import (
    SegmentRecommender,
    coverage,
    paired_ratio,
    per_user_scores,
    popularity_recommendations,
    stability,
    temporal_split,
    truth,
)
from segstream.events import Event
from segstream.offline import (
    TextEmbedder,
    segment_vectors,
)
from segstream.segmentation import Observation, SegConfig
from segstream_services.offline.eval_data import Data, Progress
from segstream_services.offline.methods import (
    HYBRID,
    INTEREST,
    METHODS,
    ONLINE,
    ONLINE_CARRY_DAYS,
    POP,
    REFERENCES,
    SEG_PARAMS,
    SEGSTREAM,
)
from segstream_services.offline.tuning import factors_advice, search_size, tune

DAY_MS = 86_400_000
DEFAULT_COOC_WEIGHT = 0.5  # ``SMOOTHED``'s co-occurrence weight unless tuned
# ``HYBRID``'s β and factor scaling unless tuned: the best candidate on both datasets'
# tuning splits (README, "Tuning splits").
DEFAULT_HYBRID_WEIGHT = 0.5
DEFAULT_HYBRID_SCALED = True


@dataclass
class EvalConfig:
    split_ms: list[int]
    horizon_days: float = 180.0
    stability_days: tuple[float, ...] = (7.0, 30.0)
    ks: tuple[int, ...] = (8,)
    seeds: tuple[int, ...] = (0, 1, 2)
    min_rating: float = 4.0
    top_n: int = 10
    min_users_per_k: int = 3
    tune_until_ms: int | None = None
    search: bool = True  # False: keep the settings' values; tuning splits are left out
    methods: tuple[str, ...] = METHODS  # the reported rows (a subset saves time)


def metric_names(config: EvalConfig) -> tuple[str, ...]:
    return ("hr", "ndcg", "coverage", *(f"stability_{d:g}d" for d in config.stability_days))


@dataclass
class _Acc:
    """Sums over splits for one method, k and seed."""

    hits: float = 0.0
    ndcg: float = 0.0
    users: int = 0
    coverage: list[float] = field(default_factory=list)
    stability: dict[str, list[float]] = field(default_factory=dict)
    per_user: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {"hr": [], "ndcg": []})  # each split's users, in order

    def add(self, recs: dict, truth_sets: dict, catalogue: int, k: int) -> None:
        hits, ndcgs = per_user_scores(recs, truth_sets, k)
        self.per_user["hr"].append(hits)
        self.per_user["ndcg"].append(ndcgs)
        self.hits += float(hits.sum())
        self.ndcg += float(ndcgs.sum())
        self.users += len(hits)
        self.coverage.append(coverage(recs, truth_sets, catalogue, k))

    def result(self, config: EvalConfig) -> dict[str, float]:
        out = {"hr": self.hits / self.users if self.users else math.nan,
               "ndcg": self.ndcg / self.users if self.users else math.nan,
               "coverage": float(np.mean(self.coverage)) if self.coverage else math.nan}
        for d in config.stability_days:
            xs = [x for x in self.stability.get(f"stability_{d:g}d", []) if not math.isnan(x)]
            out[f"stability_{d:g}d"] = float(np.mean(xs)) if xs else math.nan
        return out


def summarize(per_seed: dict[int, dict[str, float]], names: Sequence[str]
              ) -> dict[str, tuple[float, float]]:
    out = {}
    for metric in names:
        values = [v[metric] for v in per_seed.values() if not math.isnan(v[metric])]
        out[metric] = (mean(values), pstdev(values)) if values else (math.nan, math.nan)
    return out


@dataclass
class EvalResult:
    config: EvalConfig
    splits_used: list[int]
    tuning_splits: list[int]
    users_evaluated: int
    chosen: dict[str, float | bool]
    tuning: list[dict]
    interest_counts: dict[str, int]
    methods: dict[int, dict[str, dict[int, dict[str, float]]]]  # k -> method -> seed -> m
    # k -> method -> reference -> metric -> (ratio, low, high): ``paired_ratios``
    ratios: dict[int, dict[str, dict[str, dict[str, tuple[float, float, float]]]]] = field(
        default_factory=dict)
    factors_advice: dict | None = None  # ``tuning.factors_advice`` of the tuning log

    def summary(self, k: int, method: str) -> dict[str, tuple[float, float]]:
        return summarize(self.methods[k][method], metric_names(self.config))

    def to_json(self) -> dict:
        return {
            "config": asdict(self.config), "splits_used_ms": self.splits_used,
            "tuning_splits_ms": self.tuning_splits, "user_split_pairs": self.users_evaluated,
            "chosen": self.chosen, "tuning": self.tuning,
            "interest_counts": self.interest_counts,
            "item_factors_advice": self.factors_advice,
            "ratios_vs_reference": {str(k): by_method for k, by_method in self.ratios.items()},
            "results": {str(k): {name: {m: {"mean": a, "std": b}
                                        for m, (a, b) in self.summary(k, name).items()}
                                 | {"per_seed": per_seed}
                                 for name, per_seed in by_method.items()}
                        for k, by_method in self.methods.items()},
        }


def rolling_splits(events: Sequence[Event], count: int, horizon_days: float) -> list[int]:
    """``count`` split times evenly spaced from the 10th percentile of event time to the
    last time that still leaves a full horizon after it."""
    times = np.array(sorted(e.ts_ms for e in events))
    first = float(np.percentile(times, 10))
    last = float(times[-1]) - horizon_days * DAY_MS
    if count < 1 or last <= first:
        return [int(np.percentile(times, 80))]
    return [int(t) for t in np.linspace(first, last, count)]


def labels_of(data: Data, method: str, t: int, k: int, seed: int, params: dict
              ) -> dict[str, str]:
    if method == ONLINE:  # a fresh fit where the caller asks for none carried (carry 0)
        method, params = INTEREST, params | {
            "carry_days": params.get("carry_days", ONLINE_CARRY_DAYS)}
    if method in SEGSTREAM and params.get("carry_days"):
        return carried_labels(data, method, t, k, seed, params)
    users, matrix = data.rows(method, t, params)
    if method in SEGSTREAM:
        seg = segment_vectors(users, matrix, [""] * len(users), seg_config(k, seed, params), t)
        return seg.labels()
    return {u: str(x) for u, x in zip(users, kmeans_labels(matrix, k, seed), strict=True)}


def seg_config(k: int, seed: int, params: dict) -> SegConfig:
    """The clusterer's configuration: k and seed, and the ``SEG_PARAMS`` in ``params``."""
    return SegConfig(k=k, seed=seed, **{name: params[name] for name in SEG_PARAMS
                                         if name in params})


def carried_labels(data: Data, method: str, t: int, k: int, seed: int, params: dict
                   ) -> dict[str, str]:
    """The segmentation at ``t`` as the online segmenter would hold it: fitted
    ``carry_days`` before, then ``carry_passes`` (default 1) ``observe`` steps with every
    user's vector at ``t`` (partial fit, hysteresis against their segment) and a
    maintenance refit (kept only when it lowers the inertia by ``refit_min_gain``); a
    fresh fit at ``t`` when fewer than ``2 k`` users were there to fit. ``HYBRID`` keeps
    the item factors of the fit unless ``refresh_factors``."""
    start = t - int(params["carry_days"] * DAY_MS)
    fresh = params | {"carry_days": 0}
    users, matrix = data.rows(method, start, fresh)
    if len(users) < 2 * k:  # too few users then: the segmenter starts at t
        return labels_of(data, method, t, k, seed, fresh)
    fitted = segment_vectors(users, matrix, [""] * len(users), seg_config(k, seed, params),
                             start)
    now = fitted.labels()
    if method == HYBRID and not params.get("refresh_factors"):
        fresh = fresh | {"factors_at": start}  # the factor table the centres were fitted on
    users, matrix = data.rows(method, t, fresh)
    for _ in range(max(1, int(params.get("carry_passes", 1)))):
        batch = [Observation(u, matrix[i], "", now.get(u)) for i, u in enumerate(users)]
        now = now | {a.key: a.segment_id for a in fitted.segmenter.observe(batch, t)}
    batch = [Observation(u, matrix[i], "", now.get(u)) for i, u in enumerate(users)]
    return now | {a.key: a.segment_id for a in fitted.segmenter.maintain(batch, t)}


def _score_split(data: Data, split_ms: int, config: EvalConfig, methods: Sequence[str],
                 params: dict, seeds: Sequence[int], ks: Sequence[int],
                 accs: dict, stability_days: Sequence[float], tick: Progress) -> int:
    horizon = int(config.horizon_days * DAY_MS)
    split = temporal_split(data.events, split_ms, horizon)
    truth_sets = truth(split, config.min_rating)
    users = sorted(truth_sets)
    if not users or len(data.users(split_ms)) < max(ks) * config.min_users_per_k:
        for _ in itertools.product(seeds, methods):
            tick(f"split {_fmt(split_ms)} skipped")
        return 0
    catalogue = len({e.item_id for e in split.history})
    recommender = SegmentRecommender(split.history, config.min_rating)
    for seed, method in itertools.product(seeds, methods):
        tick(f"split {_fmt(split_ms)}, seed {seed}: {method}")
        for k in ks:
            acc = accs[k][method][seed]
            if method == POP:
                recs = popularity_recommendations(split.history, users, config.top_n,
                                                  config.min_rating)
                acc.add(recs, truth_sets, catalogue, config.top_n)
                continue
            now = labels_of(data, method, split_ms, k, seed, params)
            recs = recommender(now, users, config.top_n)
            acc.add(recs, truth_sets, catalogue, config.top_n)
            for d in stability_days:
                before_t = split_ms - int(d * DAY_MS)
                if len(data.users(before_t)) >= k * config.min_users_per_k:
                    before = labels_of(data, method, before_t, k, seed,
                                       params | {"carry_days": 0})
                    acc.stability.setdefault(f"stability_{d:g}d", []).append(
                        stability(before, now))
    return len(users)


def _fmt(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def plan(config: EvalConfig) -> tuple[list[int], list[int]]:
    """(tuning splits, reported splits)."""
    if config.tune_until_ms is None:
        return [], list(config.split_ms)
    horizon = int(config.horizon_days * DAY_MS)
    tuning = [t for t in config.split_ms if t + horizon <= config.tune_until_ms]
    return tuning, [t for t in config.split_ms if t >= config.tune_until_ms]


def total_steps(config: EvalConfig) -> int:
    tuning, report = plan(config)
    searched = len(tuning) * search_size() if tuning and config.search else 0
    return searched + len(report) * len(config.seeds) * len(config.methods)


def run_eval(events: Sequence[Event], ingest: IngestSettings, interest: InterestSettings,
             embed: TextEmbedder, config: EvalConfig, progress: Progress | None = None,
             tick: Progress | None = None, segmenter: SegmenterSettings | None = None
             ) -> EvalResult:
    """Evaluate every method on every reported split, k and seed (tuning first, if asked);
    the segstream rows cluster with ``segmenter``'s settings (default: the defaults)."""
    tick = tick or (lambda _msg: None)
    tuning_splits, report = plan(config)
    if not config.search:
        tuning_splits = []
    times = set(tuning_splits) | set(report)
    times |= {t - int(d * DAY_MS) for t in report
              for d in (*config.stability_days, ONLINE_CARRY_DAYS)}
    times |= {t - int(d * DAY_MS) for t in tuning_splits for d in config.stability_days[:1]}
    data = Data(events, sorted(times), ingest, interest, embed, progress)
    params: dict = {"half_life_days": interest.half_life_days,
                    "center_items": interest.center_items,
                    "text_weight": interest.view_weights.get("text", 0.5)
                    / max(interest.view_weights.get("interest", 1.0), 1e-9),
                    "cooc_weight": DEFAULT_COOC_WEIGHT,
                    "hybrid_weight": DEFAULT_HYBRID_WEIGHT,
                    "hybrid_scaled": DEFAULT_HYBRID_SCALED}
    seg = segmenter or SegmenterSettings()
    params |= {name: getattr(seg, name) for name in SEG_PARAMS}
    tuning_log: list[dict] = []
    if tuning_splits and config.search:
        days = config.stability_days[:1]

        def scored(method: str, candidate: dict) -> dict[int, dict[str, float]]:
            accs = {k: {method: {0: _Acc()}} for k in config.ks}
            for split_ms in tuning_splits:
                _score_split(data, split_ms, config, [method], candidate, [0], config.ks,
                             accs, days, tick)
            return {k: accs[k][method][0].result(config) for k in config.ks}

        chosen, tuning_log = tune(scored, days[0], params)
        params |= chosen
    accs = {k: {m: {s: _Acc() for s in config.seeds} for m in config.methods}
            for k in config.ks}
    used, pairs = [], 0
    for split_ms in report:
        n = _score_split(data, split_ms, config, config.methods, params, config.seeds, config.ks,
                         accs, config.stability_days, tick)
        if n:
            used.append(split_ms)
            pairs += n
    methods = {k: {m: {s: acc.result(config) for s, acc in per_seed.items() if acc.users}
                   for m, per_seed in by_method.items()} for k, by_method in accs.items()}
    for by_method in methods.values():  # popularity is not a segmentation
        for seed_result in by_method.get(POP, {}).values():
            for d in config.stability_days:
                seed_result[f"stability_{d:g}d"] = math.nan
    return EvalResult(config, used, tuning_splits, pairs, params, tuning_log,
                      data.interest_counts, methods, paired_ratios(accs),
                      factors_advice(tuning_log))


def paired_ratios(accs: dict[int, dict[str, dict[int, _Acc]]]
                  ) -> dict[int, dict[str, dict[str, dict[str, tuple[float, float, float]]]]]:
    """Each method's HR@10 and NDCG@10 over each reference's (``REFERENCES`` present) on
    the same user-split pairs, each pair's value the mean over seeds, with a 95% paired
    bootstrap interval over the pairs (``evaluation.paired_ratio``): how far a ratio
    such as 1.11x could be from the same method on another draw of users."""
    def pairs(per_seed: dict[int, _Acc], metric: str) -> np.ndarray | None:
        runs = [np.concatenate(acc.per_user[metric]) for acc in per_seed.values()
                if acc.per_user[metric]]
        return np.mean(runs, axis=0) if runs else None

    out: dict[int, dict[str, dict[str, dict[str, tuple[float, float, float]]]]] = {}
    for k, by_method in accs.items():
        for ref in (r for r in REFERENCES if r in by_method):
            for method, per_seed in by_method.items():
                if method in (ref, POP):
                    continue
                for metric in ("hr", "ndcg"):
                    a, b = pairs(per_seed, metric), pairs(by_method[ref], metric)
                    if a is not None and b is not None:
                        out.setdefault(k, {}).setdefault(method, {}).setdefault(ref, {})[
                            metric] = paired_ratio(a, b)
    return out
