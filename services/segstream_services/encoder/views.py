"""A user's views and the vector the segmenter clusters, computed without a transformer.

- **interest**: from the user's interest state (``Keys.interest``: item → anchored weight,
  kept by ingest, see ``segstream.feature_store``) and the item vectors (``items``):
  ``v = Σ weight_i · x̃_i`` over the items that have a vector, where ``x̃_i`` is the unit
  item vector minus the catalogue centre, renormalised (``interest.center_items``; as
  ``segstream.interest.InterestAggregator`` does offline), then ``v / |v|``. O(items ·
  dimension) numpy per user (under item factors, ``x̃_i`` is ``text ⊕ weight · factor``,
  see ``segstream.item_factors``). A NaN or zero result is rejected with its reason; items
  without a vector are left out and counted (``interest.fallback = cooccurrence`` is an
  offline rule for now: online such items are always left out, as with ``skip``).
- **text**: the embedding of the feature text (``textview``), coalesced and rate-limited.
- **combination**: the concatenation of the unit views each multiplied by its weight
  (``interest.view_weights``; a view of weight 0 is left out), exactly
  ``segstream.offline.combine_views`` for one user; a view the user does not have yet
  counts as zeros, and a user with no view at all has no vector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from segstream.config import ViewName
from segstream.encoding import Encoder
from segstream.interest import EPS
from segstream.keys import Keys

VIEW_ORDER: tuple[ViewName, ...] = ("interest", "text")


def interest_vector(weights: Mapping[str, float], vectors: Mapping[str, np.ndarray],
                    center: np.ndarray | None = None) -> tuple[np.ndarray | None, str, int]:
    """(unit interest vector or None, outcome, items used). Outcomes: ``ok``,
    ``no_items`` (no item with a vector and a positive weight), ``nan``, ``zero``."""
    used = [i for i, w in weights.items() if w > 0 and i in vectors]
    if not used:
        return None, "no_items", 0
    X = np.asarray([vectors[i] for i in used], dtype=np.float64)
    if center is not None:
        X = X - center
        norms = np.linalg.norm(X, axis=1)
        keep = norms > EPS
        X = X[keep] / norms[keep, None]
        used = [i for i, k in zip(used, keep, strict=True) if k]
        if not used:
            return None, "zero", 0
    w = np.asarray([weights[i] for i in used], dtype=np.float64)
    with np.errstate(all="ignore"):
        total = w @ X
        norm = float(np.linalg.norm(total))
    if not np.isfinite(total).all() or not np.isfinite(norm):
        return None, "nan", len(used)
    if norm <= EPS * float(w.sum()):
        return None, "zero", len(used)
    return total / norm, "ok", len(used)


def state_of(reply: list[tuple[bytes, float]]) -> dict[str, float]:
    """A user's interest state (item → weight) from ``ZRANGE interest(uid) 0 -1
    WITHSCORES``."""
    return {i.decode(): float(w) for i, w in reply}


def vec_hash(data: bytes) -> str:
    """The ``vec_hash`` stored beside a vector's bytes (an unchanged vector is not
    rewritten)."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def active_views(weights: Mapping[ViewName, float]) -> list[ViewName]:
    """The views with a positive weight, in the combination's order."""
    return [v for v in VIEW_ORDER if weights.get(v, 0.0) > 0]


def view_dims(encoder: Encoder) -> dict[ViewName, int]:
    """Each view's length under ``encoder``: the interest view is as long as its item
    vectors (text, plus the factor part under item factors), the text view its text."""
    return {"interest": encoder.item_dim, "text": encoder.dim}


def combine(views: Mapping[ViewName, np.ndarray | None], weights: Mapping[ViewName, float],
            dims: Mapping[ViewName, int]) -> np.ndarray | None:
    """The segmenter's vector: each active view L2-normalised times its weight, in
    ``VIEW_ORDER``, concatenated (zeros of ``dims[view]`` for a view the user lacks);
    None when the user has none of the active views."""
    parts, present = [], False
    for name in active_views(weights):
        vec = views.get(name)
        if vec is None:
            parts.append(np.zeros(dims[name]))
            continue
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(norm) or norm <= EPS:
            parts.append(np.zeros(dims[name]))
            continue
        parts.append(weights[name] * np.asarray(vec, dtype=np.float64) / norm)
        present = True
    return np.concatenate(parts) if present else None


def view_report(client: Any, keys: Keys, user_id: str, weights: Mapping[ViewName, float],
                now_ms: int) -> dict[str, Any]:
    """The user's views for ``segstream user``: weights, the interest view (items in the
    state, items in the vector, its model, its age) and the text view (model, when
    embedded, queued)."""
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.interest(user_id))
    pipe.hmget(keys.emb(user_id), ["interest_ms", "interest_items", "interest_missing",
                                   "text_model", "text_ms", "model_version"])
    pipe.zscore(keys.text_due(), user_id)
    items, (i_ms, used, missing, t_model, t_ms, model), due = pipe.execute()

    def num(raw: bytes | None) -> int | None:
        return int(raw) if raw is not None and int(raw) > 0 else None

    i_at, t_at = num(i_ms), num(t_ms)
    return {
        "weights": ", ".join(f"{v} {weights.get(v, 0.0):g}" for v in VIEW_ORDER),
        "interest": {
            "items_in_state": int(items),
            "items_in_vector": num(used) or 0,
            "items_without_vector": num(missing) or 0,
            # the model the vector was built under; one with item factors (a rollout of
            # ``segstream factors build``'s directory) makes items text ⊕ factor
            "model_version": model.decode() if model else None,
            "computed_at": _iso(i_at),
            "age_s": None if i_at is None else round((now_ms - i_at) / 1000, 1)},
        "text": {
            "model_version": t_model.decode() if t_model else None,
            "embedded_at": _iso(t_at),
            "age_s": None if t_at is None else round((now_ms - t_at) / 1000, 1),
            "queued_until": _iso(int(due)) if due is not None else None},
    }


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
