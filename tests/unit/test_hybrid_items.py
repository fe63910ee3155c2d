"""Hybrid item vectors: each item's text vector beside its co-occurrence factor."""

from __future__ import annotations

import numpy as np
import pytest

from segstream.config import InterestSettings
from segstream.events import Event
from segstream.interest import cooccurrence_factors, hybrid_item_vectors
from segstream.offline import interest_at


def ev(user: str, item: str, ts: int) -> Event:
    return Event(event_id=f"{user}-{item}-{ts}", user_id=user, item_id=item, type="purchase",
                 ts_ms=ts)


def baskets() -> list[Event]:
    """Three disjoint groups of users (8, 6 and 4), each always taking the same items."""
    groups = {"rock": (8, ("guitar", "amp")), "jazz": (6, ("sax", "reed")),
              "folk": (4, ("banjo", "fiddle", "capo"))}
    out = []
    for name, (size, items) in groups.items():
        for u in range(size):
            for n, item in enumerate(items):
                out += [ev(f"{name}{u}", item, 1_000 * u + n)] * (1 + u % 2)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("scaled", [False, True])
def test_items_co_taken_by_the_same_users_get_close_factors(scaled: bool) -> None:
    factors = cooccurrence_factors(baskets(), dims=3, seed=0, scaled=scaled)
    assert sorted(factors) == sorted(["guitar", "amp", "sax", "reed", "banjo", "fiddle", "capo"])
    assert all(f.shape == (3,) and np.linalg.norm(f) > 0.1 for f in factors.values())
    assert cosine(factors["guitar"], factors["amp"]) > 0.99
    assert cosine(factors["banjo"], factors["capo"]) > 0.99
    for a, b in (("guitar", "sax"), ("amp", "banjo"), ("reed", "fiddle")):
        assert abs(cosine(factors[a], factors[b])) < 0.1, (a, b)


def test_factors_are_deterministic_padded_and_scaled_by_singular_values() -> None:
    first = cooccurrence_factors(baskets(), dims=64, seed=0)
    again = cooccurrence_factors(list(reversed(baskets())), dims=64, seed=0)
    assert first.keys() == again.keys()
    for item in first:
        np.testing.assert_array_equal(first[item], again[item])
        assert first[item].shape == (64,) and not first[item][6:].any()  # 7 items: 6 fit
    items = sorted(first)
    plain = np.array([cooccurrence_factors(baskets(), dims=3, seed=0)[i] for i in items])
    scaled = np.array([cooccurrence_factors(baskets(), dims=3, seed=0, scaled=True)[i]
                       for i in items])
    np.testing.assert_allclose(plain.T @ plain, np.eye(3), atol=1e-9)  # orthonormal components
    singular = np.einsum("ij,ij->j", scaled, plain)  # each component's own scale
    np.testing.assert_allclose(scaled, plain * singular, atol=1e-9)
    assert singular[0] > singular[1] > singular[2] > 0
    assert cooccurrence_factors([ev("u1", "a", 1)], dims=8) == {}  # nothing to factor
    assert cooccurrence_factors([]) == {}


def test_hybrid_vectors_put_zeros_in_the_missing_part() -> None:
    text = {"guitar": np.array([3.0, 0.0, 0.0]), "poster": np.array([0.0, 2.0, 0.0]),
            "broken": np.array([np.nan, 0.0, 0.0])}
    factors = {"guitar": np.array([0.0, 4.0]), "strings": np.array([1.0, 1.0])}
    out = hybrid_item_vectors(text, factors, beta=0.5)
    assert sorted(out) == ["guitar", "poster", "strings"]  # "broken": neither part usable
    assert all(v.shape == (5,) for v in out.values())
    np.testing.assert_allclose(out["guitar"], [1.0, 0.0, 0.0, 0.0, 0.5])  # unit ⊕ β·unit
    np.testing.assert_allclose(out["poster"], [0.0, 1.0, 0.0, 0.0, 0.0])  # no factor
    np.testing.assert_allclose(out["strings"], [0.0, 0.0, 0.0, 0.5 / np.sqrt(2),
                                                0.5 / np.sqrt(2)])  # no text
    fixed = hybrid_item_vectors({}, factors, beta=2.0, dims=(4, 2))  # no text at all
    np.testing.assert_allclose(fixed["guitar"], [0.0, 0.0, 0.0, 0.0, 0.0, 2.0])
    assert hybrid_item_vectors({}, {}, beta=1.0) == {}


def test_interest_vectors_over_hybrid_items_separate_what_text_alone_cannot() -> None:
    """Two groups whose items read alike (same text vector) but are never co-taken: over
    text alone their users coincide; over text ⊕ factors they are apart."""
    history = baskets()
    same = np.array([1.0, 0.0, 0.0, 0.0])
    text = {item: same for item in {e.item_id for e in history}}
    factors = cooccurrence_factors(history, dims=3, seed=0)
    hybrid = hybrid_item_vectors(text, factors, beta=1.0)
    settings = InterestSettings()
    t = max(e.ts_ms for e in history) + 1
    plain = interest_at(history, [t], settings, text)[0][t]
    mixed = interest_at(history, [t], settings, hybrid)[0][t]
    assert cosine(plain["rock0"], plain["jazz0"]) == pytest.approx(1.0)
    assert cosine(mixed["rock0"], mixed["rock3"]) > 0.99
    assert cosine(mixed["rock0"], mixed["jazz0"]) < 0.6
    assert all(v.shape == (7,) for v in mixed.values())
