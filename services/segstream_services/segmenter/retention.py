"""Bounded model state: retired segments and families leave the segmenter's state.

A retired segment or family stays in the model (and in the catalog hash ``seg_catalog()``)
for ``segmenter.retired_retention_days`` after its retirement, then ``prune`` removes it.
Its last catalog record, with the full lineage, stays on the compacted catalog topic (no
tombstone is published), and ids are never reused: the model's id counters
(``next_segment``, ``next_family``) are separate from the segments it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from segstream.segmentation import OnlineSegmenter


@dataclass
class Pruned:
    """The ids ``prune`` removed from the model."""

    segments: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [*self.segments, *self.families]


def prune(model: OnlineSegmenter, now_ms: int, retention_days: float) -> Pruned:
    """Remove the segments and families retired more than ``retention_days`` before
    ``now_ms`` (0: keep them forever); returns what was removed."""
    out = Pruned()
    if retention_days <= 0:
        return out
    cutoff = now_ms - int(retention_days * 86_400_000)
    live = set(model.slot_ids)
    out.segments = sorted(sid for sid, seg in model.segments.items()
                          if seg.retired_ms is not None and seg.retired_ms < cutoff
                          and sid not in live)
    out.families = sorted(fid for fid, fam in model.families.items()
                          if fam.retired_ms is not None and fam.retired_ms < cutoff)
    for sid in out.segments:
        del model.segments[sid]
    for fid in out.families:
        del model.families[fid]
    gone = set(out.segments)
    if gone:
        for fam in model.families.values():
            fam.members -= gone
    return out
