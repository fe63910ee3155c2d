"""Segment identity across centre updates: which centre keeps which id, and the lineage.

After every step or refit the centres are matched to the active ids' anchor centroids
(``ids.match_by_distance``) or, across embedding spaces, by members; an unmatched centre is
born (or split from a close kept one), an id that lost its centre is retired (or merged
into a close survivor), and the families are rebuilt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from segstream.segmentation.hierarchy import rebuild_families
from segstream.segmentation.ids import match_by_distance, spacing
from segstream.segmentation.types import Segment

if TYPE_CHECKING:
    from segstream.segmentation.core import OnlineSegmenter


def distance_mapping(model: OnlineSegmenter) -> dict[int, str]:
    """``{slot: id}`` for centres still within reach of an active id's anchor."""
    assert model.centres is not None
    ids = [sid for sid in model.slot_ids if model.segments[sid].active]
    if not ids:
        return {}
    anchors = np.stack([model.segments[sid].anchor for sid in ids])
    tau = model.config.id_change_ratio * spacing(model.centres)
    return {j: ids[i] for j, i in match_by_distance(anchors, model.centres, tau).items()}



def reconcile(model: OnlineSegmenter, mapping: dict[int, str], before: dict[str, np.ndarray],
              now_ms: int, origin: str, reanchor: bool = False) -> None:
    """Give the slots of ``model.centres`` their ids: ``mapping`` keeps ids, the other
    slots are born (or split), lost ids retire (or merge); then rebuild the families."""
    assert model.centres is not None
    old_ids = list(model.slot_ids)
    new_ids: list[str] = []
    born: list[int] = []
    for j in range(len(model.centres)):
        sid = mapping.get(j)
        if sid is None:
            sid = f"s{model.next_segment}"
            model.next_segment += 1
            model.segments[sid] = Segment(sid, model.centres[j].copy(), now_ms, model.version,
                                         origin)
            born.append(j)
        elif reanchor:
            model.segments[sid].anchor = model.centres[j].copy()
        new_ids.append(sid)
    model.slot_ids = new_ids
    kept = {j for j in range(len(new_ids)) if j not in born}
    tau2 = 2 * model.config.id_change_ratio * spacing(model.centres)
    for j in born:
        seg = model.segments[new_ids[j]]
        near = _nearest(model, model.centres[j], [k for k in kept])
        if origin != "cold-start" and near is not None and near[1] <= tau2:
            seg.origin, seg.parents = "split", [new_ids[near[0]]]
            model.segments[new_ids[near[0]]].children.append(seg.id)
        model.record_event("split" if seg.origin == "split" else "birth", seg.id, seg.parents,
                    now_ms)
    for sid in old_ids:
        if sid in new_ids:
            continue
        seg = model.segments[sid]
        seg.retired_ms, seg.retired_version = now_ms, model.version
        seg.anchor, seg.terms = np.zeros(0), {}  # label and lineage stay, bulk goes
        near = (_nearest(model, before[sid], list(range(len(new_ids))))
                if sid in before else None)
        if near is not None and near[1] <= tau2 and new_ids[near[0]] != sid:
            seg.merged_into = new_ids[near[0]]
            model.record_event("merge", sid, [sid], now_ms, into=seg.merged_into)
        else:
            model.record_event("retire", sid, [], now_ms)
    changed = bool(born) or set(old_ids) != set(new_ids)
    rebuild_families(model, now_ms, regroup=origin == "cold-start" or (
        origin == "refit" and changed))



def _nearest(model: OnlineSegmenter, point: np.ndarray, slots: list[int]
             ) -> tuple[int, float] | None:
    assert model.centres is not None
    if not slots:
        return None
    d = np.linalg.norm(model.centres[slots] - point, axis=1)
    i = int(np.argmin(d))
    return slots[i], float(d[i])
