"""Segment ids across an embedding-space change: the refit, the bound, the report (no I/O).

The id bound (tested): a user keeps its id whenever its old segment and its new cluster
are *mutual majorities* — more than half of the old segment's users fall into the new
cluster and more than half of the new cluster came from the old segment
(``segmentation.ids.match_by_overlap`` keeps every such pair). So the share of users whose
id changes is at most ``1 - sum(overlap of mutual-majority pairs) / users``, which
``RolloutReport`` states beside the share that did change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from segstream.segmentation import Assignment, Observation, OnlineSegmenter


@dataclass
class RolloutReport:
    """What a cutover (or rollback) did to the segment ids."""

    users: int
    changed: int
    bound_changed: int           # the most users that may change (see the module docstring)
    from_version: str
    to_version: str
    changed_users: list[str] = field(default_factory=list)

    @property
    def changed_share(self) -> float:
        return self.changed / self.users if self.users else 0.0

    @property
    def bound_share(self) -> float:
        return self.bound_changed / self.users if self.users else 0.0


def mutual_majority_kept(previous: Sequence[str | None], labels: Sequence[Hashable]
                         ) -> set[int]:
    """Indices of users whose old segment and new cluster are mutual (strict) majorities."""
    pairs = Counter((p, n) for p, n in zip(previous, labels, strict=True) if p)
    old_size = Counter(p for p in previous if p)
    new_size = Counter(labels)
    good = {(p, n) for (p, n), c in pairs.items()
            if 2 * c > old_size[p] and 2 * c > new_size[n]}
    return {i for i, (p, n) in enumerate(zip(previous, labels, strict=True))
            if (p, n) in good}


def migrate(model: OnlineSegmenter, batch: list[Observation], new_version: str, now_ms: int
            ) -> tuple[OnlineSegmenter, list[Assignment], RolloutReport]:
    """A copy of ``model`` refitted in the new embedding space (ids follow members), every
    user's assignment there, and the report (changed share and its bound)."""
    new = OnlineSegmenter.from_dict(model.to_dict())
    old_version = model.model_version or ""
    assignments = new.refit_by_members(batch, now_ms)
    new.model_version = new_version
    nearest = [a.segment_id for a in new.assign_many(
        [Observation(o.key, o.vector) for o in batch])]  # no previous: the nearest centre
    kept = mutual_majority_kept([o.previous for o in batch], nearest)
    changed = [a.key for a in assignments if a.previous_segment_id is not None and a.changed]
    seen = sum(o.previous is not None for o in batch)
    report = RolloutReport(seen, len(changed), seen - len(kept), old_version, new_version,
                           changed)
    return new, assignments, report


def restore(model: OnlineSegmenter, batch: list[Observation], ids: dict[str, str]
            ) -> list[Assignment]:
    """Assignments in a restored ``model`` (a rollback): each user is assigned with its
    pre-rollout id ``ids[key]`` as the hysteresis anchor, and reported against its
    current segment (``Observation.previous``)."""
    anchored = [Observation(o.key, o.vector, o.text, ids[o.key]) for o in batch]
    out = []
    for a, o in zip(model.assign_many(anchored), batch, strict=True):
        a.previous_segment_id = o.previous
        a.changed = a.segment_id != o.previous
        a.reason = "moved" if a.changed else "stayed"
        out.append(a)
    return out
