"""What `segstream eval` clusters: every method's rows per snapshot time, built once and
shared by every seed, k and split (profiles, item and feature-text vectors, interest
vectors under each half-life, the baselines' matrices)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from segstream.baselines import category_matrix, cooccurrence_matrix, rfm_matrix
from segstream.config import IngestSettings, InterestSettings
from segstream.events import Event
from segstream.interest import (
    cooccurrence_factors,
    cooccurrence_smoothed,
    event_weight,
    hybrid_item_vectors,
)
from segstream.offline import (
    TextEmbedder,
    combine_views,
    interest_at,
    item_table,
    item_texts,
    profiles_at,
    view_matrix,
)
from segstream_services.offline.methods import (
    CAT,
    COOC,
    HYBRID,
    INTEREST,
    RFM,
    SMOOTHED,
    TEXT,
)

Progress = Callable[[str], None]
FACTOR_DIMS = 64  # ``HYBRID``'s item co-occurrence factors (as the ``COOC`` baseline's SVD)


class Data:
    """Everything seed-independent: per snapshot time the users and each method's rows."""

    def __init__(self, events: Sequence[Event], times: Sequence[int], ingest: IngestSettings,
                 interest: InterestSettings, embed: TextEmbedder,
                 progress: Progress | None = None) -> None:
        self.events = sorted(events, key=lambda e: e.ts_ms)
        self.stamps = np.asarray([e.ts_ms for e in self.events])
        self.interest = interest
        self.embed = embed
        say = progress or (lambda _msg: None)
        say("building feature texts")
        self.profiles = profiles_at(self.events, times, ingest)
        texts = sorted({p.text for by_user in self.profiles.values() for p in by_user.values()})
        items = item_texts(self.events, interest.item_text_chars)
        item_list = sorted(set(items.values()))
        say(f"embedding {len(item_list):,} item texts and {len(texts):,} feature texts")
        table = dict(zip(item_list, embed(item_list), strict=True)) if item_list else {}
        # the texts' vectors (the derived rows build on them) and what the interest view
        # uses: the same, or text ⊕ factor under a model directory with item factors
        self.text_item_vectors = {item: table[text] for item, text in items.items()}
        self.item_vectors = item_table(embed.encoder, self.text_item_vectors)
        embed(texts)
        self.dim = int(embed.encoder.dim)
        self.item_dim = int(embed.encoder.item_dim)
        self._interest: dict[tuple[float, bool], dict[int, dict[str, np.ndarray]]] = {}
        self._factors: dict[tuple[int, bool], dict[str, np.ndarray]] = {}
        self._derived: dict[tuple, np.ndarray] = {}  # rows over derived item tables
        self.interest_counts: dict[str, int] = {}
        self.baselines: dict[int, dict[str, tuple[list[str], np.ndarray]]] = {}
        say("building baseline matrices")
        for t in times:
            history = self.history(t)
            self.baselines[t] = {RFM: rfm_matrix(history, t), COOC: cooccurrence_matrix(history),
                                 CAT: category_matrix(history)}

    def history(self, t: int) -> list[Event]:
        return self.events[:int(np.searchsorted(self.stamps, t, side="left"))]

    def users(self, t: int) -> list[str]:
        return sorted(self.profiles[t])

    def _settings(self, half_life: float, center: bool) -> InterestSettings:
        return self.interest.model_copy(update={"half_life_days": half_life,
                                                "center_items": center})

    def _over_items(self, t: int, settings: InterestSettings,
                    items: dict[str, np.ndarray], dim: int) -> np.ndarray:
        """Interest vectors at ``t`` from the events before it over the item table
        ``items`` (one derived from those events, as a periodic job would)."""
        by_time, _ = interest_at(self.history(t), [t], settings, items)
        return view_matrix(self.users(t), by_time[t], dim)[0]

    def interest_vectors(self, t: int, half_life: float, center: bool) -> np.ndarray:
        key = (half_life, center)
        if key not in self._interest:
            self._interest[key], counts = interest_at(self.events, sorted(self.profiles),
                                                      self._settings(half_life, center),
                                                      self.item_vectors)
            if not self.interest_counts:
                self.interest_counts = counts
        return view_matrix(self.users(t), self._interest[key][t], self.item_dim)[0]

    def smoothed_vectors(self, t: int, half_life: float, center: bool, weight: float
                         ) -> np.ndarray:
        """Interest vectors at ``t`` over item vectors smoothed by the co-occurrences of
        the events before ``t`` (recomputed per snapshot, as a periodic job would)."""
        key = (SMOOTHED, half_life, center, weight, t)
        if key not in self._derived:
            settings = self._settings(half_life, center)
            liked = [e for e in self.history(t) if event_weight(e, settings) > 0]
            items = cooccurrence_smoothed(liked, self.text_item_vectors, weight)
            self._derived[key] = self._over_items(t, settings, items, self.dim)
        return self._derived[key]

    def factors(self, t: int, scaled: bool) -> dict[str, np.ndarray]:
        """Item co-occurrence factors from the events before ``t`` (seed 0)."""
        if (t, scaled) not in self._factors:
            self._factors[t, scaled] = cooccurrence_factors(self.history(t), FACTOR_DIMS, 0,
                                                            scaled)
        return self._factors[t, scaled]

    def hybrid_vectors(self, t: int, half_life: float, center: bool, beta: float,
                       scaled: bool = False, factors_at: int | None = None) -> np.ndarray:
        """Interest vectors at ``t`` over the item vectors ``text ⊕ beta · factor``, the
        factors computed from the events before ``factors_at`` (default ``t``: a job run
        at the snapshot; earlier: the table a segmenter fitted then still holds)."""
        at = t if factors_at is None else factors_at
        key = (HYBRID, half_life, center, beta, scaled, t, at)
        if key not in self._derived:
            items = hybrid_item_vectors(self.text_item_vectors, self.factors(at, scaled), beta,
                                        (self.dim, FACTOR_DIMS))
            self._derived[key] = self._over_items(t, self._settings(half_life, center), items,
                                                  self.dim + FACTOR_DIMS)
        return self._derived[key]

    def text_vectors(self, t: int) -> np.ndarray:
        return self.embed([self.profiles[t][u].text for u in self.users(t)])

    def rows(self, method: str, t: int, params: dict) -> tuple[list[str], np.ndarray]:
        """The users and the matrix a method clusters at time ``t``."""
        if method in self.baselines[t]:
            return self.baselines[t][method]
        users = self.users(t)
        center = params.get("center_users", False)
        if method == TEXT:
            return users, combine_views([(self.text_vectors(t), 1.0)], center)
        if method == SMOOTHED:
            smoothed = self.smoothed_vectors(t, params["half_life_days"],
                                             params["center_items"], params["cooc_weight"])
            return users, combine_views([(smoothed, 1.0)], center)
        if method == HYBRID:
            hybrid = self.hybrid_vectors(t, params["half_life_days"], params["center_items"],
                                         params["hybrid_weight"],
                                         params.get("hybrid_scaled", False),
                                         params.get("factors_at"))
            return users, combine_views([(hybrid, 1.0)], center)
        inter = self.interest_vectors(t, params["half_life_days"], params["center_items"])
        if method == INTEREST:
            return users, reduce_dims(combine_views([(inter, 1.0)], center),
                                      params.get("dims", 0))
        return users, combine_views([(inter, 1.0),
                                     (self.text_vectors(t), params["text_weight"])], center)


def reduce_dims(matrix: np.ndarray, dims: int) -> np.ndarray:
    """The rows projected on their ``dims`` principal components (0: unchanged)."""
    if dims <= 0 or dims >= min(matrix.shape):
        return matrix
    centred = matrix - matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:dims].T
