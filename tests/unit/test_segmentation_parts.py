"""Helpers of the clusterer: id matching, labels, text diffs, engagement tiers."""

from __future__ import annotations

import numpy as np
import pytest

from segstream.segmentation.engagement import DAY_MS, EngagementThresholds, engagement_tier
from segstream.segmentation.ids import match_by_distance, match_by_overlap, match_sets, spacing
from segstream.segmentation.labels import (
    add_text,
    ctfidf,
    decay,
    label_and_description,
    text_changes,
)


def test_distance_matching_is_a_permutation_within_reach() -> None:
    old = np.eye(3)
    new = np.eye(3)[[2, 0, 1]] + 0.01
    assert match_by_distance(old, new, 0.2) == {0: 2, 1: 0, 2: 1}
    far = np.eye(3)[[2, 0, 1]] * 5
    assert match_by_distance(old, far, 0.2) == {}
    assert spacing(np.eye(3)) == pytest.approx(2 ** 0.5)


def test_overlap_matching_needs_a_majority_of_shared_members() -> None:
    old = ["a", "a", "a", "b", "b", "b", None]
    assert match_by_overlap(old, [1, 1, 1, 0, 0, 0, 0]) == {1: "a", 0: "b"}
    assert match_by_overlap(old, [0, 1, 2, 0, 1, 2, 0]) == {}


def test_set_matching_uses_jaccard() -> None:
    old = {"f1": {"s1", "s2"}, "f2": {"s3", "s4"}}
    assert match_sets(old, [{"s3", "s4", "s5"}, {"s1", "s2"}]) == {0: "f2", 1: "f1"}
    assert match_sets(old, [{"s1", "s3"}, {"s2", "s4"}]) == {}


def test_ctfidf_prefers_distinguishing_terms() -> None:
    a: dict[str, float] = {}
    b: dict[str, float] = {}
    for _ in range(5):
        add_text(a, "Mostly electronics (60%). Active on weekday evenings. Recently: earbuds.")
        add_text(b, "Mostly books (70%). Active on weekday evenings. Recently: novels.")
    ranked = ctfidf({"a": a, "b": b})
    label, desc = label_and_description(ranked["a"], 2, 5)
    assert "electronics" in label and "weekday" not in label
    assert desc.startswith("Distinguished by") and "earbuds" in desc
    decay(a, 0.0)
    assert a == {}


def test_labels_name_interests_not_activity() -> None:
    a: dict[str, float] = {}
    b: dict[str, float] = {}
    for _ in range(5):
        add_text(a, "Mostly games (80%). Recently: chess set. Last 30 days: 11-20 events "
                    "(plays, views). No purchases. Active in the evening, on weekdays.")
        add_text(b, "Mostly garden (90%). Recently: rake. Last 30 days: 3-5 events "
                    "(purchases, clicks). Spent 50-100 on 2 purchases. Active in the "
                    "morning, mostly on weekends.")
    ranked = ctfidf({"a": a, "b": b})
    for sid, interest in (("a", "games"), ("b", "garden")):
        label, _ = label_and_description(ranked[sid], 3, 8)
        words = set(label.replace("/", " ").split())
        assert interest in words, label
        assert not words & {"plays", "views", "purchases", "clicks", "morning", "evening",
                            "weekends", "weekdays", "spent"}, label


def test_text_changes_lists_added_and_removed_sentences() -> None:
    old = "Last 30 days: 4 views. Mostly books (100%). Recently: dune."
    new = "Last 30 days: 9 views. Mostly books (100%). Recently: dune, emma."
    assert text_changes(old, new) == {
        "added": ["Last 30 days: 9 views.", "Recently: dune, emma."],
        "removed": ["Last 30 days: 4 views.", "Recently: dune."],
    }
    assert text_changes(None, "A. B.") == {"added": ["A.", "B."], "removed": []}


@pytest.mark.parametrize("age, idle, freq, tier", [
    (2, 0, 50, "new"),
    (60, 1, 3, "active"),
    (60, 1, 30, "loyal"),
    (60, 20, 30, "at-risk"),
    (60, 45, 30, "dormant"),
])
def test_engagement_tiers(age: int, idle: int, freq: int, tier: str) -> None:
    now = 100 * DAY_MS
    assert engagement_tier(now - age * DAY_MS, now - idle * DAY_MS, freq, now) == tier


def test_engagement_thresholds_are_configurable() -> None:
    now = 100 * DAY_MS
    t = EngagementThresholds(loyal_frequency=2, dormant_days=3)
    assert engagement_tier(0, now - 5 * DAY_MS, 1, now, thresholds=t) == "dormant"
    assert engagement_tier(0, now, 2, now, thresholds=t) == "loyal"
