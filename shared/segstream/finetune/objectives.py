"""The contrastive loss, its negatives masks and the held-out retrieval score."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segstream.finetune.items import ItemPair
from segstream.finetune.windows import Pair


def _codes(values: Sequence[str], codes: dict[str, int]) -> np.ndarray:
    return np.array([codes.setdefault(v, len(codes)) for v in values])


def _negatives_mask(users: Sequence[str], anchors: Sequence[str], positives: Sequence[str],
                    device: torch.device) -> torch.Tensor:
    """True where (i, j), i != j, must not count as a negative: same user or same text."""
    n = len(users)
    mask = np.zeros((n, n), dtype=bool)
    for key in (users, anchors, positives):
        ids = _codes(key, {})
        mask |= ids[:, None] == ids[None, :]
    np.fill_diagonal(mask, False)
    return torch.from_numpy(mask).to(device)


def item_mask(anchors: Sequence[str], positives: Sequence[str],
              device: torch.device) -> torch.Tensor:
    """True where (i, j), i != j, must not count as a negative for item pairs: the two
    rows share an item text on either side (or one row's anchor is the other's
    positive), so ``b_j`` is a positive of ``a_i`` or a copy of one of its items."""
    codes: dict[str, int] = {}
    a, b = _codes(anchors, codes), _codes(positives, codes)
    mask = ((a[:, None] == a[None, :]) | (b[:, None] == b[None, :])
            | (a[:, None] == b[None, :]) | (b[:, None] == a[None, :]))
    np.fill_diagonal(mask, False)
    return torch.from_numpy(mask).to(device)


def negatives_mask(pairs: Sequence[Pair | ItemPair], device: torch.device) -> torch.Tensor:
    """The mask that fits the kind of pairs (window pairs or item pairs)."""
    anchors, positives = [p.anchor for p in pairs], [p.positive for p in pairs]
    if pairs and isinstance(pairs[0], ItemPair):
        return item_mask(anchors, positives, device)
    return _negatives_mask([p.user_id for p in pairs], anchors, positives, device)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float,
             masked: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of row-aligned pairs (cosine similarity / temperature)."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    if masked is not None:
        logits = logits.masked_fill(masked, float("-inf"))
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval(a: np.ndarray, b: np.ndarray, masked: np.ndarray) -> tuple[float, float]:
    """(top-1 accuracy, mean reciprocal rank) of finding each anchor's own positive."""
    sims = unit(a) @ unit(b).T
    sims[masked] = -np.inf
    own = np.diag(sims)
    ranks = 1 + (sims > own[:, None]).sum(axis=1)
    return float((ranks == 1).mean()), float((1.0 / ranks).mean())
