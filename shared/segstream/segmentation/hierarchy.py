"""The interest hierarchy: tier-1 families above the fine segments.

Families are an agglomerative (Ward) clustering of the fine centroids; a family keeps its
id while its set of fine segments stays mostly the same (Jaccard ≥ 0.5, Hungarian matched).
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from segstream.segmentation.ids import match_sets


def family_count(k: int, configured: int) -> int:
    """The configured number of families, or about sqrt(k); always in [1, k]."""
    n = configured or max(2, round(k ** 0.5))
    return max(1, min(n, k))


def group_centres(centres: np.ndarray, n_families: int) -> list[int]:
    """A family index per centre (Ward linkage, deterministic)."""
    if n_families <= 1 or len(centres) <= 1:
        return [0] * len(centres)
    labels = AgglomerativeClustering(n_clusters=n_families, linkage="ward").fit_predict(centres)
    return [int(x) for x in labels]


def stable_families(previous: dict[str, set[str]], groups: list[set[str]], next_id: int
                    ) -> tuple[dict[str, set[str]], int]:
    """Name each new group with the id of the previous family it matches, or a fresh id.

    Returns the families ``{family_id: {segment ids}}`` and the next unused family number.
    """
    matched = match_sets(previous, groups)
    families: dict[str, set[str]] = {}
    for i, members in enumerate(groups):
        fid = matched.get(i)
        if fid is None:
            fid = f"f{next_id}"
            next_id += 1
        families[fid] = set(members)
    return families, next_id
