"""The interest hierarchy: tier-1 families above the fine segments.

Families are an agglomerative (Ward) clustering of the fine centroids; a family keeps its
id while its set of fine segments stays mostly the same (Jaccard ≥ 0.5, Hungarian matched).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from segstream.segmentation.ids import match_sets
from segstream.segmentation.types import Family

if TYPE_CHECKING:
    from segstream.segmentation.core import OnlineSegmenter


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


def rebuild_families(model: OnlineSegmenter, now_ms: int, regroup: bool = False) -> None:
    """Keep each segment in its family unless another family's centre is closer by the
    hysteresis margin; new segments join the nearest family. A full Ward regrouping
    (ids kept by Jaccard overlap) happens at (re)fits and when a family runs empty."""
    assert model.centres is not None
    n = family_count(model.config.k, model.config.families)
    live = {f.id: f for f in model.families.values() if f.retired_ms is None}
    if not regroup and len(live) == n:
        slot = {sid: j for j, sid in enumerate(model.slot_ids)}
        cents = {}
        for fid, fam in live.items():
            rows = [slot[s] for s in fam.members if s in slot]
            if rows:
                cents[fid] = model.centres[rows].mean(axis=0)
        if len(cents) == n:
            fids = sorted(cents)
            table = np.stack([cents[f] for f in fids])
            groups: dict[str, set[str]] = {f: set() for f in fids}
            for j, sid in enumerate(model.slot_ids):
                d = np.linalg.norm(table - model.centres[j], axis=1)
                best = fids[int(np.argmin(d))]
                cur = model.segments[sid].family
                if cur in cents and d[fids.index(cur)] * (
                        1.0 - model.config.hysteresis_margin) <= d[fids.index(best)]:
                    best = cur
                groups[best].add(sid)
            if all(groups.values()):
                _set_families(model, groups, live, now_ms)
                return
    idx = group_centres(model.centres, n)
    sets = [{model.slot_ids[j] for j in range(len(idx)) if idx[j] == g}
            for g in sorted(set(idx))]
    previous = {fid: f.members for fid, f in live.items()}
    fams, model.next_family = stable_families(previous, sets, model.next_family)
    _set_families(model, fams, live, now_ms)


def _set_families(model: OnlineSegmenter, fams: dict[str, set[str]],
                  live: dict[str, Family], now_ms: int) -> None:
    for fid, members in fams.items():
        if fid in model.families:
            model.families[fid].members = members
        else:
            model.families[fid] = Family(fid, members, now_ms)
            model.record_event("family-birth", fid, [], now_ms)
        for sid in members:
            model.segments[sid].family = fid
    for fid in live:
        if fid not in fams:
            model.families[fid].retired_ms = now_ms
            model.record_event("family-retire", fid, [], now_ms)
