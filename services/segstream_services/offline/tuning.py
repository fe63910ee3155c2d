"""The search `segstream eval --tune-until` runs on the tuning splits, and its grid.

Only splits whose whole truth period ends before ``tune_until`` are searched; the
reported splits never choose anything. ``tune`` takes the scorer from ``evaluate`` (one
method and parameter set over the tuning splits → results per k), so this module holds
only what is searched, in which order, and what is logged.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from segstream_services.offline.methods import (
    COMBO,
    HYBRID,
    INTEREST,
    REFERENCES,
    SEG_PARAMS,
    SMOOTHED,
)

# The grid searched on the tuning splits (only with tune_until). A text weight of 0 is
# the interest vector alone.
HALF_LIVES = (14.0, 60.0, 180.0, 365.0, 0.0)
CENTRES = (True, False)
TEXT_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
# ``SMOOTHED``: the weight of the co-occurrence direction in the item vectors
# (``interest.cooccurrence_smoothed``); an offline ablation, not yet a setting.
COOC_WEIGHTS = (0.5, 1.0, 2.0)
# ``HYBRID``: β, the weight of the unit co-occurrence factor beside the unit text vector
# in the item vectors, and whether the factors are scaled by the singular values.
HYBRID_WEIGHTS = (0.25, 0.5, 1.0, 2.0)
HYBRID_SCALED = (False, True)
# Probes logged on the tuning splits (never chosen): the interest view reduced by PCA to
# this many dimensions before clustering, and segmentations carried forward online from
# the first stability offset (``carried_labels``) instead of refitted; the baselines.
PROBE_DIMS = (16, 64)
# Probes of the carried interest view with other segmenter settings (logged, never chosen).
ONLINE_PROBES: tuple[dict, ...] = (
    {"hysteresis_margin": 0.0}, {"hysteresis_margin": 0.2}, {"refit_min_gain": 0.0},
    {"refit_min_gain": 0.02}, {"refit_min_gain": 0.1}, {"carry_passes": 3})

# One method and parameter set scored over the tuning splits (seed 0): result per k.
Scorer = Callable[[str, dict], dict[int, dict[str, float]]]


def tuning_grid() -> list[tuple[str, dict]]:
    """The first stage of the search: the interest view's half-life and centring."""
    return [(INTEREST, {"half_life_days": h, "center_items": c})
            for h, c in itertools.product(HALF_LIVES, CENTRES)]


def search_size() -> int:
    """How many candidates ``tune`` scores on each tuning split."""
    return (len(tuning_grid()) + len(TEXT_WEIGHTS) + len(COOC_WEIGHTS)
            + len(HYBRID_WEIGHTS) * len(HYBRID_SCALED) + len(PROBE_DIMS)
            + 4  # carried: interest, smoothed, hybrid with the fit's and with new factors
            + len(ONLINE_PROBES) + len(REFERENCES))


def tune(score: Scorer, stability_day: float, base: dict | None = None
         ) -> tuple[dict, list[dict]]:
    """Choose half-life and centring (interest view), then the text weight of the
    combination (0 = interest alone), the co-occurrence weight of the smoothed view and
    β (and singular-value scaling) of the hybrid view, each by mean NDCG@10 over the k
    values. Every candidate is logged with its HR, NDCG and stability (``stability_day``
    apart) per k; the PCA probes of the interest view and the carried ones
    (``ONLINE_PROBES``: other segmenter settings) are logged, never chosen. ``base``'s
    segmenter settings (``SEG_PARAMS``) hold for every candidate."""
    log: list[dict] = []
    stability = f"stability_{stability_day:g}d"

    def ndcg(method: str, params: dict) -> float:
        per_k = score(method, params)
        value = float(np.mean([r["ndcg"] for r in per_k.values()]))
        log.append({"method": method, **params, "ndcg": value,
                    "per_k": {str(k): {m: r[m] for m in ("hr", "ndcg", stability)}
                              for k, r in per_k.items()}})
        return value

    fixed = {name: value for name, value in (base or {}).items() if name in SEG_PARAMS}
    best = max((fixed | p for _, p in tuning_grid()), key=lambda p: ndcg(INTEREST, p))
    weight = max(TEXT_WEIGHTS, key=lambda w: ndcg(COMBO, best | {"text_weight": w}))
    cooc = max(COOC_WEIGHTS, key=lambda w: ndcg(SMOOTHED, best | {"cooc_weight": w}))
    hybrid = max((best | {"hybrid_weight": w, "hybrid_scaled": s}
                  for s, w in itertools.product(HYBRID_SCALED, HYBRID_WEIGHTS)),
                 key=lambda p: ndcg(HYBRID, p))
    for dims in PROBE_DIMS:
        ndcg(INTEREST, best | {"dims": dims})
    carried = {"carry_days": stability_day}
    # HYBRID carried twice: with the factor table of the fit (one basis for the centres and
    # the users' vectors) and with the factors recomputed at T (a job that ran in between).
    for method, params in ((INTEREST, best), (SMOOTHED, best | {"cooc_weight": cooc}),
                           (HYBRID, hybrid), (HYBRID, hybrid | {"refresh_factors": True})):
        ndcg(method, params | carried)
    for probe in ONLINE_PROBES:
        ndcg(INTEREST, best | carried | probe)
    for method in REFERENCES:
        ndcg(method, {})
    return best | {"text_weight": weight, "cooc_weight": cooc,
                   "hybrid_weight": hybrid["hybrid_weight"],
                   "hybrid_scaled": hybrid["hybrid_scaled"]}, log


def factors_advice(log: list[dict]) -> dict | None:
    """Whether the tuning splits favour an item-factor table: the best refitted hybrid
    candidate's mean NDCG@10 against the best refitted interest vector's (probes and
    carried candidates aside), with the β to build it with (``segstream factors
    build --weight``). None without both in ``log``."""
    def refitted(method: str) -> list[dict]:
        return [e for e in log if e["method"] == method
                and "dims" not in e and "carry_days" not in e]

    interest, hybrid = refitted(INTEREST), refitted(HYBRID)
    if not interest or not hybrid:
        return None
    base = max(interest, key=lambda e: e["ndcg"])
    best = max(hybrid, key=lambda e: e["ndcg"])
    return {"build": best["ndcg"] > base["ndcg"], "interest_ndcg": base["ndcg"],
            "factors_ndcg": best["ndcg"], "weight": best["hybrid_weight"],
            "scaled": best["hybrid_scaled"]}
