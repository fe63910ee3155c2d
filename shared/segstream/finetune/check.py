"""Does a co-occurrence fine-tune do what it claims? Two measures on held-out items.

- **Pair cosine**: mean cosine of the held-out co-occurring pairs against the mean
  cosine of random pairs (each pair's anchor with a random catalog item), and the AUC:
  the chance that a co-occurring pair is closer than a random pair (scale-free: a
  contrastive fine-tune often moves every cosine up, so the raw gap alone can mislead).
- **Cold-start retrieval**: each held-out item (never seen in training) is embedded from
  its title alone, as a brand-new item would be, and all catalog items are ranked by
  cosine; recall@k is the share of its true co-occurring partners (from the held-out
  pairs) in the top k (out of min(k, partners)). Also with its full text.

``embed`` is any texts -> vectors function, so the same check runs inside training
(before and after) and on saved model directories (``Encoder(...).encode``).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from segstream.finetune.items import Item, ItemPair
from segstream.finetune.objectives import unit

Embed = Callable[[Sequence[str]], np.ndarray]


def _recall(queries: np.ndarray, catalog: np.ndarray, own: Sequence[int],
            partners: Sequence[set[int]], k: int) -> float:
    sims = unit(queries) @ unit(catalog).T
    sims[np.arange(len(own)), own] = -np.inf  # the item itself is not an answer
    top = np.argsort(-sims, axis=1)[:, :k]
    return float(np.mean([len(set(row.tolist()) & p) / min(k, len(p))
                          for row, p in zip(top, partners, strict=True)]))


def cooccurrence_check(embed: Embed, held: Sequence[ItemPair], items: dict[str, Item],
                       new_items: set[str], catalog: Sequence[str], *, k: int = 10,
                       seed: int = 0) -> dict[str, Any]:
    """The measures of the module doc; ``catalog`` = the item texts ranked (it must hold
    every text of ``held``), ``new_items`` = the held-out item texts to query with."""
    index = {t: i for i, t in enumerate(catalog)}
    missing = [t for p in held for t in (p.anchor, p.positive) if t not in index]
    if missing:
        raise ValueError(f"catalog lacks held-out item {missing[0]!r}")
    rng = random.Random(seed)
    vectors = unit(np.asarray(embed(list(catalog)), dtype=np.float32))
    a = np.array([index[p.anchor] for p in held])
    b = np.array([index[p.positive] for p in held])
    r = np.array([rng.choice([j for j in (rng.randrange(len(catalog)) for _ in range(4))
                              if j not in (a[i], b[i])] or [0]) for i in range(len(held))])
    pos = np.sum(vectors[a] * vectors[b], axis=1)
    rnd = np.sort(np.sum(vectors[a] * vectors[r], axis=1))
    positive, random_cos = float(pos.mean()), float(rnd.mean())
    below = np.searchsorted(rnd, pos, "left")
    ties = np.searchsorted(rnd, pos, "right") - below
    auc = float(np.mean((below + ties / 2) / len(rnd)))
    partners: dict[str, set[int]] = defaultdict(set)
    for p in held:
        for x, y in ((p.anchor, p.positive), (p.positive, p.anchor)):
            if x in new_items:
                partners[x].add(index[y])
    queries = sorted(partners)
    out: dict[str, Any] = {"held_out_pairs": len(held), "positive_cosine": positive,
                           "random_cosine": random_cos, "gap": positive - random_cos, "auc": auc,
                           "new_items": len(queries), "catalog": len(catalog), "k": k,
                           "chance_recall": k / max(1, len(catalog) - 1)}
    if queries:
        own = [index[q] for q in queries]
        sets = [partners[q] for q in queries]
        titles = unit(np.asarray(embed([items[q].title_text for q in queries]),
                                 dtype=np.float32))
        out["recall_title_only"] = _recall(titles, vectors, own, sets, k)
        out["recall_full_text"] = _recall(vectors[own], vectors, own, sets, k)
    return out


def catalog_for(train: Sequence[ItemPair], held: Sequence[ItemPair]) -> list[str]:
    """Every item text of the pairs, sorted: the candidates of the retrieval check."""
    return sorted({t for p in (*train, *held) for t in (p.anchor, p.positive)})
