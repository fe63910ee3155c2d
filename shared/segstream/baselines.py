"""The segmentations segstream is compared with: RFM, item co-occurrence and category
histogram, each + KMeans.

Each builds one numeric row per user from the events before the split time: RFM
standardised; co-occurrence as the user × item matrix of log(1 + interactions) × idf,
reduced by TruncatedSVD to 64 dimensions and L2-normalised (latent semantic analysis of
users' item "documents"); the category histogram as shares. scikit-learn's KMeans then
runs with the same k and seed as segstream's own clustering.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
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


def cooccurrence_matrix(history: Sequence[Event], dims: int = 64, seed: int = 0
                        ) -> tuple[list[str], np.ndarray]:
    """Per user: the TruncatedSVD (``dims`` components) of their log-tf-idf item row."""
    users = sorted({e.user_id for e in history})
    items = sorted({e.item_id for e in history})
    if not users:
        return users, np.zeros((0, dims))
    u_index = {u: i for i, u in enumerate(users)}
    i_index = {it: j for j, it in enumerate(items)}
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for e in history:
        counts[(u_index[e.user_id], i_index[e.item_id])] += 1
    rows, cols = zip(*counts, strict=True)
    tf = sparse.csr_matrix((np.log1p(np.fromiter(counts.values(), dtype=np.float64)),
                            (rows, cols)), shape=(len(users), len(items)))
    df = np.bincount(np.asarray(cols), minlength=len(items))
    weighted = tf @ sparse.diags(np.log(len(users) / df) + 1.0)
    n = min(dims, len(users) - 1, len(items) - 1)
    if n < 1:
        return users, np.ones((len(users), 1))
    reduced = TruncatedSVD(n_components=n, random_state=seed).fit_transform(weighted)
    return users, reduced / np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)


def kmeans_labels(matrix: np.ndarray, k: int, seed: int) -> np.ndarray:
    """KMeans (k-means++, 10 restarts) labels; k is capped at the number of rows."""
    k = max(1, min(k, len(matrix)))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(matrix)
