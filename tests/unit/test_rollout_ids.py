"""Segment ids across a model rollout (``rollout.migrate``): the stated bound, tested.

Bound: a user keeps its segment id whenever its old segment and its new cluster are mutual
majorities (more than half of each); so the share of users whose id changes is at most
``1 - (users in mutual-majority pairs) / users``, and ``RolloutReport`` reports both.
"""

from __future__ import annotations

import numpy as np

from segstream.segmentation import Observation, OnlineSegmenter, SegConfig
from segstream_services.rollout.migrate import migrate, mutual_majority_kept

K, DIM, PER = 5, 24, 40


def _space(rng: np.random.Generator, groups: list[int], spread: float = 0.15) -> np.ndarray:
    centres = rng.normal(size=(max(groups) + 1, DIM))
    return np.stack([centres[g] + spread * rng.normal(size=DIM) for g in groups])


def _old_model(rng: np.random.Generator) -> tuple[OnlineSegmenter, list[str], list[int],
                                                   dict[str, str]]:
    groups = [g for g in range(K) for _ in range(PER)]
    users = [f"u{i:03d}" for i in range(len(groups))]
    vecs = _space(rng, groups)
    model = OnlineSegmenter(SegConfig(k=K, seed=0))
    model.model_version = "old-model"
    got = model.fit([Observation(u, v, f"interest {g}") for u, v, g in
                     zip(users, vecs, groups, strict=True)], 0)
    return model, users, groups, {a.key: a.segment_id for a in got}


def test_unchanged_users_keep_ids_and_moved_users_are_reported() -> None:
    rng = np.random.default_rng(0)
    model, users, groups, before = _old_model(rng)
    # The new model embeds everything differently (another random space), and 10% of the
    # users really changed behaviour: they now sit with another group.
    moved = set(rng.choice(len(users), size=len(users) // 10, replace=False).tolist())
    new_groups = [(g + 1) % K if i in moved else g for i, g in enumerate(groups)]
    new_vecs = _space(rng, new_groups)
    batch = [Observation(u, v, f"interest {g}", before[u])
             for u, v, g in zip(users, new_vecs, new_groups, strict=True)]
    new, assignments, report = migrate(model, batch, "new-model", 1)

    after = {a.key: a.segment_id for a in assignments}
    group_id = {g: before[users[i]] for i, g in enumerate(groups)}  # old id of each group
    for i, u in enumerate(users):
        assert after[u] == group_id[new_groups[i]]  # stayed: same id; moved: the group's id
    assert report.changed == len(moved) and set(report.changed_users) == \
        {users[i] for i in moved}
    assert report.changed_share == len(moved) / len(users) <= report.bound_share
    assert new.model_version == "new-model" and model.model_version == "old-model"
    assert set(new.slot_ids) == set(model.slot_ids)  # no id was retired or born


def test_bound_holds_when_a_segment_splits_in_the_new_space() -> None:
    rng = np.random.default_rng(1)
    model, users, groups, before = _old_model(rng)
    # The new model separates group 0 into two sub-groups (65% / 35%) and merges groups 3
    # and 4, so the segmenter (still k segments) must reshape.
    split = [6 if g == 0 and i % 20 >= 13 else (3 if g == 4 else g)
             for i, g in enumerate(groups)]
    batch = [Observation(u, v, "", before[u])
             for u, v in zip(users, _space(rng, split), strict=True)]
    new, assignments, report = migrate(model, batch, "new-model", 1)
    after = {a.key: a.segment_id for a in assignments}
    labels = [a.segment_id for a in  # the nearest centre (no previous segment to keep)
              new.assign_many([Observation(o.key, o.vector) for o in batch])]
    kept = mutual_majority_kept([o.previous for o in batch], labels)
    assert all(after[users[i]] == before[users[i]] for i in kept)  # the guarantee
    assert report.changed <= report.bound_changed == len(users) - len(kept)
    assert 0 < report.changed_share < 0.5
    assert report.changed == sum(after[u] != before[u] for u in users)
    # The 65% of group 0 keep its id; the 35% that split off get another one.
    g0 = [i for i, g in enumerate(groups) if g == 0]
    assert sum(after[users[i]] == before[users[i]] for i in g0) >= 0.6 * len(g0)


def test_mutual_majority() -> None:
    prev = ["a", "a", "a", "b", "b", "b", None]
    labels = [0, 0, 1, 1, 1, 0, 2]
    assert mutual_majority_kept(prev, labels) == {0, 1, 3, 4}
    assert mutual_majority_kept(["a", "a", "b", "b"], [0, 1, 0, 1]) == set()  # ties: no
