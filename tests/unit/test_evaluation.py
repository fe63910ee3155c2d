"""The recommender-side judges of a segmentation, on hand-checked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segstream.baselines import (
    category_matrix,
    cooccurrence_matrix,
    kmeans_labels,
    rfm_matrix,
    top_category,
)
from segstream.evaluation import (
    SegmentRecommender,
    cluster_scores,
    paired_ratio,
    per_user_scores,
    popularity_recommendations,
    recommend,
    score,
    segment_recommendations,
    stability,
    temporal_split,
    truth,
)
from segstream.events import Event
from segstream.interest import cooccurrence_smoothed

DAY = 86_400_000


def ev(user: str, item: str, day: float, rating: float | None = None,
       category: str | None = None, price: float | None = None) -> Event:
    return Event(event_id=f"{user}-{item}-{day}", user_id=user, ts_ms=int(day * DAY),
                 type="rate" if rating is not None else "purchase", item_id=item,
                 category=category, rating=rating, price=price)


def test_split_truth_keeps_new_liked_items_of_known_users_only() -> None:
    events = [ev("a", "x", 1, 5), ev("a", "y", 11, 5), ev("a", "x", 12, 5),  # x: seen before
              ev("a", "z", 12, 2),                                           # z: disliked
              ev("new", "y", 12, 5)]                                         # no history
    split = temporal_split(events, split_ms=10 * DAY)
    assert [e.item_id for e in split.history] == ["x"]
    assert truth(split, min_rating=4.0) == {"a": {"y"}}
    assert temporal_split(events, 10 * DAY, horizon_ms=int(1.5 * DAY)).future == [events[1]]


def test_recommend_skips_excluded_and_repeats_and_tops_up() -> None:
    assert recommend([["a", "b", "c"], ["c", "d", "e"]], {"b"}, k=4) == ["a", "c", "d", "e"]
    assert recommend([["a"]], set(), k=3) == ["a"]


def test_hr_ndcg_coverage_by_hand() -> None:
    recs = {"u1": ["x", "y", "z"], "u2": ["p", "q"], "u3": ["y"]}
    truth_sets = {"u1": {"y"}, "u2": {"r"}}  # u3 has no truth: not scored
    result = score(recs, truth_sets, catalogue_size=10, k=10)
    assert result.users == 2
    assert result.hr == pytest.approx(0.5)
    assert result.ndcg == pytest.approx((1 / math.log2(3)) / 2)
    assert result.coverage == pytest.approx(5 / 10)  # x y z p q


def test_per_user_scores_are_what_score_averages() -> None:
    recs = {"a": ["x", "y"], "b": ["z", "w"], "c": []}
    truth_sets = {"a": {"y"}, "b": {"q"}, "c": {"x"}}
    hits, ndcgs = per_user_scores(recs, truth_sets, 2)
    assert hits.tolist() == [1.0, 0.0, 0.0]
    assert ndcgs[0] == pytest.approx(1 / math.log2(3))  # the hit at rank 2 of 1 relevant
    s = score(recs, truth_sets, 10, 2)
    assert s.hr == pytest.approx(hits.mean()) and s.ndcg == pytest.approx(ndcgs.mean())


def test_paired_ratio_interval_holds_the_ratio_and_narrows_with_more_users() -> None:
    rng = np.random.default_rng(3)
    small_ref = (rng.random(100) < 0.3).astype(float)
    small = np.maximum(small_ref, (rng.random(100) < 0.1))  # method = reference + extra hits
    ratio, low, high = paired_ratio(small, small_ref)
    assert ratio == pytest.approx(small.mean() / small_ref.mean())
    assert 1.0 <= low <= ratio <= high  # never fewer hits than the reference on any user
    big_ref = np.tile(small_ref, 20)
    _, big_low, big_high = paired_ratio(np.tile(small, 20), big_ref)
    assert big_high - big_low < (high - low) / 2
    same = paired_ratio(small_ref, small_ref)
    assert same == (1.0, 1.0, 1.0)
    assert all(math.isnan(x) for x in paired_ratio(small, np.zeros(100)))
    with pytest.raises(ValueError, match="equal"):
        paired_ratio(small, small_ref[:50])


def test_segment_popularity_beats_global_popularity_on_two_tastes() -> None:
    history, future = [], []
    for i in range(20):
        taste = "rock" if i % 2 else "jazz"
        user = f"{taste}-{i}"
        for j in range(3):
            history.append(ev(user, f"{taste}-{j}", 1 + j, 5))
        history.append(ev(user, f"{taste}-3" if i < 10 else f"{taste}-4", 4, 5))
        future.append(ev(user, f"{taste}-4" if i < 10 else f"{taste}-3", 20, 5))
    for i in range(30):  # a globally popular item that none of them cares about next
        history.append(ev(f"crowd-{i}", "blockbuster", 2, 5))
    split = temporal_split(history + future, split_ms=10 * DAY)
    truth_sets = truth(split, 4.0)
    assignment = {u: u.split("-")[0] for u in truth_sets}
    seg = score(segment_recommendations(split.history, assignment, truth_sets, 1, 4.0),
                truth_sets, 11, k=1)
    pop = score(popularity_recommendations(split.history, truth_sets, 1, 4.0),
                truth_sets, 11, k=1)
    assert seg.hr == 1.0
    assert pop.hr == 0.0
    fast = SegmentRecommender(split.history, 4.0)
    for k in (1, 3, 10):
        assert fast(assignment, truth_sets, k) == segment_recommendations(
            split.history, assignment, truth_sets, k, 4.0)


def test_stability_ignores_label_names_and_sees_real_moves() -> None:
    before = {"a": 0, "b": 0, "c": 1, "d": 1}
    assert stability(before, {"a": "x", "b": "x", "c": "y", "d": "y", "e": "z"}) == 1.0
    assert stability(before, {"a": 0, "b": 1, "c": 0, "d": 1}) < 0.5


def test_cluster_scores_prefer_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    tight = np.vstack([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    labels = [0] * 50 + [1] * 50
    good = cluster_scores(tight, labels)
    bad = cluster_scores(tight, [i % 2 for i in range(100)])
    assert good.silhouette > 0.9 > bad.silhouette
    assert good.davies_bouldin < bad.davies_bouldin


def test_baseline_matrices() -> None:
    history = [ev("a", "i1", 1, category="Books/Fiction", price=10.0),
               ev("a", "i2", 2, category="books", price=30.0),
               ev("b", "i3", 9, category="Electronics|Audio")]
    users, hist = category_matrix(history)
    assert users == ["a", "b"]
    assert hist.tolist() == [[1.0, 0.0], [0.0, 1.0]]  # books, electronics
    assert top_category(history[2]) == "electronics"
    users, rfm = rfm_matrix(history, now_ms=10 * DAY)
    assert rfm.shape == (2, 3)
    assert rfm[0, 0] > rfm[1, 0]   # a is less recent
    assert rfm[0, 2] > rfm[1, 2]   # a spent more
    labels = kmeans_labels(np.vstack([hist, hist + 0.01]), k=2, seed=0)
    assert len(set(labels.tolist())) == 2


def test_cooccurrence_svd_groups_users_who_share_items() -> None:
    history = []
    for i in range(12):
        taste = "rock" if i % 2 else "jazz"
        for j in range(4):
            history.append(ev(f"{taste}-{i}", f"{taste}-{(i + j) % 6}", 1 + j))
    users, matrix = cooccurrence_matrix(history, dims=4)
    assert users == sorted({e.user_id for e in history})
    assert matrix.shape == (12, 4)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0)  # rows L2-normalised
    labels = dict(zip(users, kmeans_labels(matrix, k=2, seed=0), strict=True))
    groups = {taste: {labels[u] for u in users if u.startswith(taste)}
              for taste in ("rock", "jazz")}
    assert len(groups["rock"]) == len(groups["jazz"]) == 1 and groups["rock"] != groups["jazz"]
    assert cooccurrence_matrix([])[1].shape == (0, 64)


def test_cooccurrence_smoothing_pulls_items_toward_what_the_same_users_take() -> None:
    e1, e2, e3 = np.eye(3)
    vectors = {"guitar": e1, "amp": e2, "flute": e3, "empty": np.zeros(3)}
    history = [ev("u1", "guitar", 1), ev("u1", "amp", 2), ev("u2", "guitar", 1),
               ev("u2", "amp", 2), ev("u2", "strings", 3), ev("u3", "flute", 1)]
    out = cooccurrence_smoothed(history, vectors, weight=1.0)
    np.testing.assert_allclose([np.linalg.norm(v) for v in out.values()], 1.0)
    # guitar and amp were taken by the same users: each moves toward the other
    assert out["guitar"] @ e2 > 0.3 and out["amp"] @ e1 > 0.3
    # by hand: unit(e1 + unit(e1 + e2)) = (0.924, 0.383, 0), so the cosine is 1/sqrt(2)
    assert out["guitar"] @ out["amp"] == pytest.approx(2 ** -0.5)
    # nobody took flute with anything else: it stays where its text put it
    np.testing.assert_allclose(out["flute"], e3)
    # an item with no text takes the direction of the baskets it was in
    assert out["strings"] @ (e1 + e2) / np.sqrt(2) > 0.99 and out["strings"] @ e3 == 0
    assert "empty" not in out  # no text and never taken: left out
    unchanged = cooccurrence_smoothed(history, vectors, weight=0.0)
    np.testing.assert_allclose(unchanged["guitar"], e1)
    assert "strings" not in unchanged
