"""Interest vectors: decay math, exact merge, incremental == batch, fallback, rejection."""

from __future__ import annotations

import random

import numpy as np
import pytest

from segstream.config import InterestSettings
from segstream.events import Event
from segstream.interest import (
    DAY_MS,
    InterestAggregator,
    InterestState,
    catalogue_center,
    event_weight,
    item_text,
    readable_category,
    vector_problem,
)

HALF = 10 * DAY_MS


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float64)
    return v / np.linalg.norm(v)


def ev(user: str, item: str, day: float, kind: str = "purchase") -> Event:
    return Event(event_id=f"{user}-{item}-{day}-{kind}", user_id=user, ts_ms=int(day * DAY_MS),
                 type=kind, item_id=item)


def test_item_text_reads_the_category_path() -> None:
    assert readable_category("electronics/audio") == "electronics > audio"
    assert readable_category("Home > Kitchen>Knives") == "Home > Kitchen > Knives"
    assert readable_category("Comedy|Drama") == "Comedy, Drama"
    assert item_text("Wireless earbuds", "electronics/audio") == \
        "Wireless earbuds. electronics > audio"
    assert item_text(None, "books", "A long\tstory") == "books. A long story"
    assert item_text(None, None) is None and item_text("  ", "") is None
    assert len(item_text("x" * 500, "y" * 500, max_chars=100) or "") <= 100


def test_decay_halves_weight_per_half_life() -> None:
    state = InterestState()
    state.add(unit(1, 0), 1.0, 0, HALF)
    state.add(unit(0, 1), 1.0, HALF, HALF)  # the first event is now worth one half
    assert state.weight == pytest.approx(1.5)
    np.testing.assert_allclose(state.total, [0.5, 1.0])
    np.testing.assert_allclose(state.vector(), unit(0.5, 1.0))
    late = InterestState()
    late.add(unit(0, 1), 1.0, HALF, HALF)
    late.add(unit(1, 0), 1.0, 0, HALF)  # arrives late: weighted by its own age
    np.testing.assert_allclose(late.total, state.total)
    assert late.last_ts == HALF


def test_no_decay_and_zero_weight() -> None:
    state = InterestState()
    state.add(unit(1, 0), 2.0, 0, 0.0)
    state.add(unit(0, 1), 2.0, 10**12, 0.0)
    np.testing.assert_allclose(state.vector(), unit(1, 1))
    state.add(unit(1, 0), 0.0, 10**13, 0.0)  # zero weight: nothing changes
    assert state.last_ts == 10**12


def test_merge_is_exact_and_order_free() -> None:
    rng = random.Random(3)
    events = [(rng.uniform(0, 60) * DAY_MS, rng.choice([0.2, 1.0]),
               np.asarray([rng.gauss(0, 1) for _ in range(8)])) for _ in range(40)]
    whole, left, right = InterestState(), InterestState(), InterestState()
    for i, (ts, w, v) in enumerate(events):
        whole.add(v, w, int(ts), HALF)
        (left if i % 3 else right).add(v, w, int(ts), HALF)
    merged = left.merge(right, HALF)
    np.testing.assert_allclose(merged.total, whole.total, rtol=1e-9)
    assert merged.weight == pytest.approx(whole.weight) and merged.last_ts == whole.last_ts
    np.testing.assert_allclose(right.merge(left, HALF).total, whole.total, rtol=1e-9)
    assert InterestState().merge(left, HALF).weight == pytest.approx(left.weight)


def test_incremental_equals_batch_formula() -> None:
    settings = InterestSettings(half_life_days=10, center_items=False)
    rng = random.Random(7)
    items = {f"i{j}": np.asarray([rng.gauss(0, 1) for _ in range(6)]) for j in range(12)}
    kinds = ["view", "click", "cart", "purchase"]
    events = [ev("u", f"i{rng.randrange(12)}", rng.uniform(0, 90), rng.choice(kinds))
              for _ in range(80)]
    agg = InterestAggregator(settings, items)
    for e in rng.sample(events, len(events)):  # any arrival order
        agg.observe(e)
    newest = max(e.ts_ms for e in events)
    expected = sum(settings.type_weights[e.type] * 0.5 ** ((newest - e.ts_ms) / (10 * DAY_MS))
                   * items[e.item_id] / np.linalg.norm(items[e.item_id]) for e in events)
    np.testing.assert_allclose(agg.vectors()["u"], expected / np.linalg.norm(expected),
                               rtol=1e-9)
    assert agg.counts["embedded"] == len(events)


def test_purchases_outweigh_views() -> None:
    agg = InterestAggregator(InterestSettings(center_items=False),
                             {"a": unit(1, 0), "b": unit(0, 1)})
    agg.observe(ev("u", "a", 1, "view"))
    agg.observe(ev("u", "b", 1, "purchase"))
    vec = agg.vectors()["u"]
    assert vec[1] > vec[0] > 0


def test_items_without_text_wait_for_cooccurrence_then_take_its_mean() -> None:
    agg = InterestAggregator(InterestSettings(center_items=False, half_life_days=0),
                             {"a": unit(1, 0, 0), "b": unit(0, 1, 0)})
    assert agg.observe(ev("new", "mystery", 1)) == "no_vector"  # nothing known yet
    assert "new" not in agg.vectors()
    agg.observe(ev("u1", "a", 1))
    # co-occurs with u1's a; left out this time, from now on it stands for a
    assert agg.observe(ev("u1", "mystery", 2)) == "no_vector"
    agg.observe(ev("u2", "b", 1))
    assert agg.observe(ev("u2", "mystery", 2)) == "fallback"  # a, then learns b too
    np.testing.assert_allclose(agg.vectors()["u2"], unit(1, 1, 0))
    assert agg.observe(ev("u3", "mystery", 3)) == "fallback"
    np.testing.assert_allclose(agg.vectors()["u3"], unit(1, 1, 0))  # mean of a and b
    assert (agg.counts["no_vector"], agg.counts["fallback"]) == (2, 2)
    skip = InterestAggregator(InterestSettings(fallback="skip"), {"a": unit(1, 0)})
    skip.observe(ev("u", "a", 1))
    assert skip.observe(ev("u", "mystery", 2)) == "no_vector"


@pytest.mark.parametrize(("vec", "reason"), [
    (np.asarray([np.nan, 1.0]), "nan"), (np.asarray([np.inf, 0.0]), "nan"),
    (np.zeros(2), "zero"), (np.ones((2, 2)), "shape"), (None, "missing")])
def test_bad_item_vectors_are_rejected_with_a_counted_reason(vec: np.ndarray | None,
                                                             reason: str) -> None:
    assert vector_problem(vec) == reason
    table = {} if vec is None else {"bad": vec}
    agg = InterestAggregator(InterestSettings(fallback="skip"), table)
    assert agg.observe(ev("u", "bad", 1)) == "no_vector"
    assert agg.vectors() == {}
    if reason != "missing":
        assert agg.counts[f"item_rejected_{reason}"] == 1


def test_centering_removes_the_shared_direction() -> None:
    items = {"a": unit(1, 1, 0), "b": unit(1, 0, 1), "c": unit(1, -1, 0), "d": unit(1, 0, -1)}
    center = catalogue_center(items.values())
    assert center is not None and center[0] > 0.5 and abs(center[1]) < 1e-9
    agg = InterestAggregator(InterestSettings(), items, center=center)
    agg.observe(ev("u", "a", 1))
    agg.observe(ev("v", "c", 1))
    vecs = agg.vectors()
    assert float(vecs["u"] @ vecs["v"]) == pytest.approx(-1.0)  # opposite once centred
    assert catalogue_center([np.zeros(3)]) is None


def test_ratings_scale_the_weight_and_dislikes_weigh_nothing() -> None:
    settings = InterestSettings()
    rated = [Event(event_id=str(r), user_id="u", ts_ms=0, type="rate", item_id="i", rating=r)
             for r in (1.0, 2.5, 3.75, 5.0)]
    assert [event_weight(e, settings) for e in rated] == pytest.approx([0, 0, 0.5, 1.0])
    off = InterestSettings(rating_neutral=None)
    assert event_weight(rated[0], off) == off.type_weights["rate"]
    agg = InterestAggregator(settings, {"i": unit(1, 0)})
    assert agg.observe(rated[0]) == "zero_weight" and agg.vectors() == {}


def test_idf_weighting_favours_rare_items() -> None:
    settings = InterestSettings(idf_items=True)
    agg = InterestAggregator(settings, {"milk": unit(1, 0), "caviar": unit(0, 1)})
    for i in range(9):
        agg.observe(ev(f"u{i}", "milk", 1))
    agg.observe(ev("me", "milk", 2))
    agg.observe(ev("me", "caviar", 2))
    vec = agg.vectors()["me"]
    assert vec[1] > vec[0] > 0  # the item few others took weighs more
    plain = InterestAggregator(InterestSettings(), {"milk": unit(1, 0), "caviar": unit(0, 1)})
    plain.observe(ev("me", "milk", 2))
    plain.observe(ev("me", "caviar", 2))
    assert plain.vectors()["me"][0] == pytest.approx(plain.vectors()["me"][1])
