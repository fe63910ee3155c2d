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
combination (0: the interest vector alone) and the co-occurrence weight of the smoothed
view are either the settings' values (``DEFAULT_COOC_WEIGHT`` for the last) or, with
``tune_until``, chosen on the splits whose whole truth period ends before ``tune_until``
(by mean NDCG@10 over the k values, seed 0); only the splits at or after ``tune_until``
are reported. The tuning log also holds probes that are never chosen (PCA-reduced
interest view, segmentations carried forward online) and the baselines on those splits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import mean, pstdev

import numpy as np

from segstream.baselines import category_matrix, cooccurrence_matrix, kmeans_labels, rfm_matrix
from segstream.config import IngestSettings, InterestSettings, SegmenterSettings
from segstream.evaluation import (
    SegmentRecommender,
    popularity_recommendations,
    score,
    stability,
    temporal_split,
    truth,
)
from segstream.events import Event
from segstream.interest import cooccurrence_smoothed, event_weight
from segstream.offline import (
    TextEmbedder,
    combine_views,
    interest_at,
    item_texts,
    profiles_at,
    segment_vectors,
    view_matrix,
)
from segstream.segmentation import Observation, SegConfig

DAY_MS = 86_400_000
POP, RFM, COOC, CAT = ("global popularity", "RFM + KMeans", "co-occurrence SVD + KMeans",
                       "category histogram + KMeans")
INTEREST, TEXT, COMBO = ("segstream: interest vector", "segstream: feature text",
                         "segstream: combination")
SMOOTHED = "segstream: interest + co-occurrence"
# The interest view as the running segmenter holds it at T: fitted ONLINE_CARRY_DAYS
# before T and carried forward by its online step (``carried_labels``), not refitted at T.
ONLINE = "segstream: interest, online (carried 7 d)"
ONLINE_CARRY_DAYS = 7.0
METHODS = (POP, RFM, COOC, CAT, INTEREST, TEXT, COMBO, SMOOTHED, ONLINE)
# The short names ``--methods`` takes.
METHOD_KEYS = dict(zip(("pop", "rfm", "cooc", "cat", "interest", "text", "combo", "smoothed",
                        "online"), METHODS, strict=True))
SEGSTREAM = (INTEREST, TEXT, COMBO, SMOOTHED)
# The grid searched on the tuning splits (only with tune_until). A text weight of 0 is
# the interest vector alone.
HALF_LIVES = (14.0, 60.0, 180.0, 365.0, 0.0)
CENTRES = (True, False)
TEXT_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
# ``SMOOTHED``: the weight of the co-occurrence direction in the item vectors
# (``interest.cooccurrence_smoothed``); an offline ablation, not yet a setting.
COOC_WEIGHTS = (0.5, 1.0, 2.0)
DEFAULT_COOC_WEIGHT = 0.5
# Probes logged on the tuning splits (never chosen): the interest view reduced by PCA to
# this many dimensions before clustering, and segmentations carried forward online from
# the first stability offset (``carried_labels``) instead of refitted; the baselines.
PROBE_DIMS = (16, 64)
REFERENCES = (RFM, COOC)
# The online clusterer's settings that shape the carried step (``SegmenterSettings``);
# they travel in ``params`` so that a search can vary them. ``carry_passes``: how many
# ``observe`` steps the carried week is split into (the running segmenter sees the week
# in many batches; the eval replays the users' vectors at T that many times).
SEG_PARAMS = ("hysteresis_margin", "half_life_points", "refit_min_gain")
# Probes of the carried interest view with other segmenter settings (logged, never chosen).
ONLINE_PROBES: tuple[dict, ...] = (
    {"hysteresis_margin": 0.0}, {"hysteresis_margin": 0.2}, {"refit_min_gain": 0.0},
    {"refit_min_gain": 0.02}, {"refit_min_gain": 0.1}, {"carry_passes": 3})

Progress = Callable[[str], None]


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

    def add(self, recs: dict, truth_sets: dict, catalogue: int, k: int) -> None:
        s = score(recs, truth_sets, catalogue, k)
        self.hits += s.hr * s.users
        self.ndcg += s.ndcg * s.users
        self.users += s.users
        self.coverage.append(s.coverage)

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

    def summary(self, k: int, method: str) -> dict[str, tuple[float, float]]:
        return summarize(self.methods[k][method], metric_names(self.config))

    def to_json(self) -> dict:
        return {
            "config": asdict(self.config), "splits_used_ms": self.splits_used,
            "tuning_splits_ms": self.tuning_splits, "user_split_pairs": self.users_evaluated,
            "chosen": self.chosen, "tuning": self.tuning,
            "interest_counts": self.interest_counts,
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


class Data:
    """Everything seed-independent: per snapshot time the users and each method's rows."""

    def __init__(self, events: Sequence[Event], times: Sequence[int], ingest: IngestSettings,
                 interest: InterestSettings, embed: TextEmbedder,
                 progress: Progress | None = None) -> None:
        self.events = sorted(events, key=lambda e: e.ts_ms)
        self.stamps = np.asarray([e.ts_ms for e in self.events])
        self.interest = interest
        self.embed = embed
        say = progress or (lambda _msg: None)
        say("building feature texts")
        self.profiles = profiles_at(self.events, times, ingest)
        texts = sorted({p.text for by_user in self.profiles.values() for p in by_user.values()})
        items = item_texts(self.events, interest.item_text_chars)
        item_list = sorted(set(items.values()))
        say(f"embedding {len(item_list):,} item texts and {len(texts):,} feature texts")
        table = dict(zip(item_list, embed(item_list), strict=True)) if item_list else {}
        self.item_vectors = {item: table[text] for item, text in items.items()}
        embed(texts)
        self.dim = int(embed.encoder.dim)
        self._interest: dict[tuple[float, bool], dict[int, dict[str, np.ndarray]]] = {}
        self._smoothed: dict[tuple[float, bool, float, int], np.ndarray] = {}
        self.interest_counts: dict[str, int] = {}
        self.baselines: dict[int, dict[str, tuple[list[str], np.ndarray]]] = {}
        say("building baseline matrices")
        for t in times:
            history = self.history(t)
            self.baselines[t] = {RFM: rfm_matrix(history, t), COOC: cooccurrence_matrix(history),
                                 CAT: category_matrix(history)}

    def history(self, t: int) -> list[Event]:
        return self.events[:int(np.searchsorted(self.stamps, t, side="left"))]

    def users(self, t: int) -> list[str]:
        return sorted(self.profiles[t])

    def interest_vectors(self, t: int, half_life: float, center: bool) -> np.ndarray:
        key = (half_life, center)
        if key not in self._interest:
            settings = self.interest.model_copy(update={"half_life_days": half_life,
                                                        "center_items": center})
            self._interest[key], counts = interest_at(self.events, sorted(self.profiles),
                                                      settings, self.item_vectors)
            if not self.interest_counts:
                self.interest_counts = counts
        return view_matrix(self.users(t), self._interest[key][t], self.dim)[0]

    def smoothed_vectors(self, t: int, half_life: float, center: bool, weight: float
                         ) -> np.ndarray:
        """Interest vectors at ``t`` over item vectors smoothed by the co-occurrences of
        the events before ``t`` (recomputed per snapshot, as a periodic job would)."""
        key = (half_life, center, weight, t)
        if key not in self._smoothed:
            history = self.history(t)
            settings = self.interest.model_copy(update={"half_life_days": half_life,
                                                        "center_items": center})
            liked = [e for e in history if event_weight(e, settings) > 0]
            items = cooccurrence_smoothed(liked, self.item_vectors, weight)
            by_time, _ = interest_at(history, [t], settings, items)
            self._smoothed[key] = view_matrix(self.users(t), by_time[t], self.dim)[0]
        return self._smoothed[key]

    def text_vectors(self, t: int) -> np.ndarray:
        return self.embed([self.profiles[t][u].text for u in self.users(t)])

    def rows(self, method: str, t: int, params: dict) -> tuple[list[str], np.ndarray]:
        """The users and the matrix a method clusters at time ``t``."""
        if method in self.baselines[t]:
            return self.baselines[t][method]
        users = self.users(t)
        center = params.get("center_users", False)
        if method == TEXT:
            return users, combine_views([(self.text_vectors(t), 1.0)], center)
        if method == SMOOTHED:
            smoothed = self.smoothed_vectors(t, params["half_life_days"],
                                             params["center_items"], params["cooc_weight"])
            return users, combine_views([(smoothed, 1.0)], center)
        inter = self.interest_vectors(t, params["half_life_days"], params["center_items"])
        if method == INTEREST:
            return users, reduce_dims(combine_views([(inter, 1.0)], center),
                                      params.get("dims", 0))
        return users, combine_views([(inter, 1.0),
                                     (self.text_vectors(t), params["text_weight"])], center)


def reduce_dims(matrix: np.ndarray, dims: int) -> np.ndarray:
    """The rows projected on their ``dims`` principal components (0: unchanged)."""
    if dims <= 0 or dims >= min(matrix.shape):
        return matrix
    centred = matrix - matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:dims].T


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
    fresh fit at ``t`` when fewer than ``2 k`` users were there to fit."""
    start = t - int(params["carry_days"] * DAY_MS)
    fresh = params | {"carry_days": 0}
    users, matrix = data.rows(method, start, fresh)
    if len(users) < 2 * k:  # too few users then: the segmenter starts at t
        return labels_of(data, method, t, k, seed, fresh)
    fitted = segment_vectors(users, matrix, [""] * len(users), seg_config(k, seed, params),
                             start)
    now = fitted.labels()
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


def tuning_grid() -> list[tuple[str, dict]]:
    """The first stage of the search: the interest view's half-life and centring."""
    return [(INTEREST, {"half_life_days": h, "center_items": c})
            for h, c in itertools.product(HALF_LIVES, CENTRES)]


def plan(config: EvalConfig) -> tuple[list[int], list[int]]:
    """(tuning splits, reported splits)."""
    if config.tune_until_ms is None:
        return [], list(config.split_ms)
    horizon = int(config.horizon_days * DAY_MS)
    tuning = [t for t in config.split_ms if t + horizon <= config.tune_until_ms]
    return tuning, [t for t in config.split_ms if t >= config.tune_until_ms]


def total_steps(config: EvalConfig) -> int:
    tuning, report = plan(config)
    grid = (len(tuning_grid()) + len(TEXT_WEIGHTS) + len(COOC_WEIGHTS) + len(PROBE_DIMS)
            + 2 + len(ONLINE_PROBES) + len(REFERENCES))
    tune = len(tuning) * grid if tuning and config.search else 0
    return tune + len(report) * len(config.seeds) * len(config.methods)


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
                    "cooc_weight": DEFAULT_COOC_WEIGHT}
    seg = segmenter or SegmenterSettings()
    params |= {name: getattr(seg, name) for name in SEG_PARAMS}
    tuning_log: list[dict] = []
    if tuning_splits and config.search:
        chosen, tuning_log = tune(data, tuning_splits, config, tick, params)
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
                      data.interest_counts, methods)


def tune(data: Data, splits: Sequence[int], config: EvalConfig, tick: Progress,
         base: dict | None = None) -> tuple[dict, list[dict]]:
    """Choose half-life and centring (interest view), then the text weight of the
    combination (0 = interest alone) and the co-occurrence weight of the smoothed view,
    each by mean NDCG@10 over ``config.ks`` on the tuning splits, seed 0. Every candidate
    is logged with its HR, NDCG and stability (``stability_days[0]``) per k; the PCA
    probes of the interest view and the carried ones (``ONLINE_PROBES``: other segmenter
    settings) are logged, never chosen."""
    log: list[dict] = []
    days = config.stability_days[:1]

    def ndcg(method: str, params: dict) -> float:
        accs = {k: {method: {0: _Acc()}} for k in config.ks}
        for split_ms in splits:
            _score_split(data, split_ms, config, [method], params, [0], config.ks, accs,
                         days, tick)
        per_k = {k: accs[k][method][0].result(config) for k in config.ks}
        value = float(np.mean([r["ndcg"] for r in per_k.values()]))
        log.append({"method": method, **params, "ndcg": value,
                    "per_k": {str(k): {m: r[m] for m in ("hr", "ndcg", *(
                        f"stability_{d:g}d" for d in days))} for k, r in per_k.items()}})
        return value

    fixed = {name: value for name, value in (base or {}).items() if name in SEG_PARAMS}
    best = max((fixed | p for _, p in tuning_grid()), key=lambda p: ndcg(INTEREST, p))
    weight = max(TEXT_WEIGHTS, key=lambda w: ndcg(COMBO, best | {"text_weight": w}))
    cooc = max(COOC_WEIGHTS, key=lambda w: ndcg(SMOOTHED, best | {"cooc_weight": w}))
    for dims in PROBE_DIMS:
        ndcg(INTEREST, best | {"dims": dims})
    for method, params in ((INTEREST, best), (SMOOTHED, best | {"cooc_weight": cooc})):
        ndcg(method, params | {"carry_days": days[0]})
    for probe in ONLINE_PROBES:
        ndcg(INTEREST, best | {"carry_days": days[0]} | probe)
    for method in REFERENCES:
        ndcg(method, {})
    return best | {"text_weight": weight, "cooc_weight": cooc}, log
