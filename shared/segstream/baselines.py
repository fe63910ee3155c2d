"""The segmentations segstream is compared with: RFM + KMeans, category histogram + KMeans.

Both build one numeric row per user from the events before the split time, standardise
(RFM) or normalise (histogram) it, and run scikit-learn's KMeans with the same k and seed
as segstream's own clustering.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from segstream.events import Event

DAY_MS = 86_400_000


def top_category(event: Event) -> str:
    """Top level of a category path (``electronics/audio`` → ``electronics``)."""
    if not event.category:
        return "(none)"
    return event.category.replace("|", "/").split("/", 1)[0].strip().lower() or "(none)"


def rfm_matrix(history: Sequence[Event], now_ms: int) -> tuple[list[str], np.ndarray]:
    """Per user: log recency (days since last event), log frequency, log monetary value."""
    last: dict[str, int] = {}
    freq: dict[str, int] = defaultdict(int)
    money: dict[str, float] = defaultdict(float)
    for e in history:
        last[e.user_id] = max(last.get(e.user_id, 0), e.ts_ms)
        freq[e.user_id] += 1
        if e.price is not None:
            money[e.user_id] += e.price * (e.quantity or 1)
    users = sorted(last)
    if not users:
        return users, np.zeros((0, 3))
    rows = [[math.log1p(max(0, now_ms - last[u]) / DAY_MS), math.log1p(freq[u]),
             math.log1p(money[u])] for u in users]
    return users, StandardScaler().fit_transform(np.asarray(rows, dtype=np.float64))


def category_matrix(history: Sequence[Event]) -> tuple[list[str], np.ndarray]:
    """Per user: the share of their events in each top-level category (rows sum to 1)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in history:
        counts[e.user_id][top_category(e)] += 1
    users = sorted(counts)
    cats = sorted({c for per_user in counts.values() for c in per_user})
    index = {c: i for i, c in enumerate(cats)}
    matrix = np.zeros((len(users), len(cats)))
    if not users:
        return users, matrix
    for row, user in enumerate(users):
        for cat, n in counts[user].items():
            matrix[row, index[cat]] = n
    matrix /= matrix.sum(axis=1, keepdims=True)
    return users, matrix


def kmeans_labels(matrix: np.ndarray, k: int, seed: int) -> np.ndarray:
    """KMeans (k-means++, 10 restarts) labels; k is capped at the number of rows."""
    k = max(1, min(k, len(matrix)))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(matrix)
