"""Stable segment ids: map fresh centres (or clusters) onto the ids that already exist.

Both matchers solve a linear assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``)
and accept a pair only when it is close enough that the segment still means the same
thing; everything else is left unmatched, so the caller gives it a new id (ids are never
reused) and retires the old one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment


def spacing(centres: np.ndarray) -> float:
    """Median distance from each centre to its nearest other centre (the scale of a gap)."""
    if len(centres) < 2:
        return 1.0
    d = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(axis=1)))


def match_by_distance(old: np.ndarray, new: np.ndarray, max_distance: float
                      ) -> dict[int, int]:
    """``{new_row: old_row}`` for pairs of minimum total distance within ``max_distance``."""
    if len(old) == 0 or len(new) == 0:
        return {}
    cost = np.linalg.norm(old[:, None, :] - new[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    return {int(c): int(r) for r, c in zip(rows, cols, strict=True)
            if cost[r, c] <= max_distance}


def match_by_overlap(old_labels: Sequence[str | None], new_labels: Sequence[int],
                     min_share: float = 0.5) -> dict[int, str]:
    """``{new_cluster: old_id}`` by member overlap, for refits whose centres are not comparable
    (another encoder model). A pair is kept when the shared members are at least
    ``min_share`` of both the new cluster and the old segment (as seen in this sample)."""
    pairs = Counter((int(n), o) for o, n in zip(old_labels, new_labels, strict=True)
                    if o is not None)
    if not pairs:
        return {}
    olds = sorted({o for _, o in pairs})
    news = sorted({n for n, _ in pairs})
    overlap = np.array([[pairs.get((n, o), 0) for n in news] for o in olds], dtype=float)
    old_size = overlap.sum(axis=1, keepdims=True)
    new_size = Counter(int(n) for n in new_labels)
    new_tot = np.array([[new_size[n] for n in news]], dtype=float)
    share = np.minimum(overlap / old_size, overlap / new_tot)
    share[share < min_share] = 0.0  # so sub-threshold pairs never outbid a kept one
    rows, cols = linear_sum_assignment(-share)
    return {news[c]: olds[r] for r, c in zip(rows, cols, strict=True)
            if share[r, c] >= min_share}


def match_sets(old: dict[str, set[str]], new: list[set[str]], min_jaccard: float = 0.5
               ) -> dict[int, str]:
    """``{new_index: old_id}`` for groups of members (e.g. fine segments in a family) by
    Jaccard similarity, kept when at least ``min_jaccard``."""
    if not old or not new:
        return {}
    ids = sorted(old)
    sim = np.array([[len(old[i] & s) / max(1, len(old[i] | s)) for s in new] for i in ids])
    rows, cols = linear_sum_assignment(-sim)
    return {int(c): ids[r] for r, c in zip(rows, cols, strict=True)
            if sim[r, c] >= min_jaccard}
