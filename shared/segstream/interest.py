"""Item texts and users' interest vectors: the one implementation, offline and online.

An item's text is its title, readable category path and optional description
(``item_text``); the encoder embeds it once per model version. A user's **interest
vector** is the time-decayed, event-type-weighted sum of the vectors of the items they
engaged with. Its state is ``(decayed vector sum, decayed weight, newest event time)``:

- an event at ``t >= last`` first decays the state by ``2 ** (-(t - last) / half_life)``
  and then adds ``w * v``; an older event adds ``w * 2 ** (-(last - t) / half_life) * v``;
  so every event is weighted by ``w * 2 ** (-(newest - t) / half_life)`` whatever the
  order of arrival, and each update costs O(dimension) with no transformer pass;
- two states merge exactly (both brought to the newer reference time, then added);
- the vector used downstream is the weighted mean, L2-normalised (the direction does
  not depend on the reference time).

Items without a usable vector (no title and no category, or an embedding that is NaN or
zero, rejected with a counted reason) follow the ``fallback`` setting: ``cooccurrence``
leaves their events out until they co-occurred with embedded items — each time a user
whose interest vector exists engages with such an item, that user's interest direction is
added to the item's own co-occurrence sum — after which the item takes that weighted
mean; ``skip`` always leaves them out. Both are counted (``InterestAggregator.counts``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from segstream.config import InterestSettings
from segstream.events import Event
from segstream.features import clean_text

DAY_MS = 86_400_000
EPS = 1e-9
_PATH = re.compile(r"\s*[/>]\s*")
_LIST = re.compile(r"\s*\|\s*")


def readable_category(category: str | None) -> str:
    """``electronics/audio`` → ``electronics > audio``; ``a|b`` (a list) → ``a, b``."""
    if not category:
        return ""
    levels = [_LIST.sub(", ", part).strip(" ,") for part in _PATH.split(category)]
    return " > ".join(p for p in levels if p)


def item_text(title: str | None, category: str | None = None, description: str | None = None,
              max_chars: int = 160) -> str | None:
    """The text an item is embedded from, or None when it has neither title nor category:
    ``"<title>. <category path>. <description>"``, cleaned and capped."""
    parts = [clean_text(title or "", max_chars), clean_text(readable_category(category),
                                                            max_chars)]
    if description:
        parts.append(clean_text(description, max_chars))
    parts = [p.rstrip(".") for p in parts if p]
    if not parts:
        return None
    return clean_text(". ".join(parts), max_chars) or None


def vector_problem(vec: np.ndarray | None, dim: int | None = None) -> str | None:
    """Why a vector cannot be used (``missing``, ``shape``, ``nan``, ``zero``), or None."""
    if vec is None:
        return "missing"
    arr = np.asarray(vec)
    if arr.ndim != 1 or (dim is not None and arr.shape[0] != dim) or arr.size == 0:
        return "shape"
    if not np.isfinite(arr).all():
        return "nan"
    if float(np.linalg.norm(arr)) <= EPS:
        return "zero"
    return None


def event_weight(event: Event, settings: InterestSettings) -> float:
    """The weight of one event's item in its user's interest vector: its type's weight,
    scaled by the rating when there is one (``rating_neutral``; a disliked item weighs 0)."""
    weight = float(settings.type_weights.get(event.type, settings.other_weight))
    neutral = settings.rating_neutral
    if event.rating is not None and neutral is not None and settings.rating_max > neutral:
        liked = (event.rating - neutral) / (settings.rating_max - neutral)
        weight *= min(1.0, max(0.0, liked))
    return weight


@dataclass
class InterestState:
    """Decayed sum of weighted item vectors, decayed total weight, newest event time."""

    total: np.ndarray | None = None
    weight: float = 0.0
    last_ts: int | None = None

    def add(self, vec: np.ndarray, weight: float, ts_ms: int, half_life_ms: float) -> None:
        """Add one event (any arrival order) in O(dimension)."""
        if weight <= 0:
            return
        if self.total is None or self.last_ts is None:
            self.total = np.asarray(vec, dtype=np.float64) * weight
            self.weight, self.last_ts = weight, ts_ms
            return
        if ts_ms >= self.last_ts:
            factor = _decay(ts_ms - self.last_ts, half_life_ms)
            self.total *= factor
            self.weight *= factor
            self.last_ts = ts_ms
            scaled = weight
        else:
            scaled = weight * _decay(self.last_ts - ts_ms, half_life_ms)
        self.total += scaled * np.asarray(vec, dtype=np.float64)
        self.weight += scaled

    def merge(self, other: InterestState, half_life_ms: float) -> InterestState:
        """The state of both event sets together (exact; neither input is changed)."""
        if other.total is None or other.last_ts is None:
            return InterestState(None if self.total is None else self.total.copy(),
                                 self.weight, self.last_ts)
        if self.total is None or self.last_ts is None:
            return other.merge(self, half_life_ms)
        last = max(self.last_ts, other.last_ts)
        a = _decay(last - self.last_ts, half_life_ms)
        b = _decay(last - other.last_ts, half_life_ms)
        return InterestState(a * self.total + b * other.total,
                             a * self.weight + b * other.weight, last)

    def vector(self) -> np.ndarray | None:
        """The unit interest direction, or None when there is none (no weight, zero sum)."""
        if self.total is None or self.weight <= 0:
            return None
        norm = float(np.linalg.norm(self.total))
        if not math.isfinite(norm) or norm <= EPS * self.weight:
            return None
        return self.total / norm


def _decay(delta_ms: float, half_life_ms: float) -> float:
    if half_life_ms <= 0:
        return 1.0
    return float(0.5 ** (delta_ms / half_life_ms))


@dataclass
class InterestAggregator:
    """Users' interest states over a table of item vectors, with the text-less fallback.

    ``item_vectors`` maps item id → vector (items without text are simply absent);
    ``center`` is subtracted from every item vector first (``center_items``). Feed events
    with ``observe`` in arrival order; ``counts`` says what happened to each.
    """

    settings: InterestSettings
    item_vectors: Mapping[str, np.ndarray]
    center: np.ndarray | None = None
    users: dict[str, InterestState] = field(default_factory=dict)
    cooccurrence: dict[str, InterestState] = field(default_factory=dict)
    item_users: dict[str, set[str]] = field(default_factory=dict)
    seen_users: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    _ready: dict[str, np.ndarray | None] = field(default_factory=dict)

    @property
    def half_life_ms(self) -> float:
        return self.settings.half_life_days * DAY_MS

    def item_vector(self, item_id: str) -> np.ndarray | None:
        """The (centred, unit) vector of an embedded item; None if it has none usable."""
        if item_id in self._ready:
            return self._ready[item_id]
        raw = self.item_vectors.get(item_id)
        problem = vector_problem(raw)
        vec = None
        if problem is None:
            vec = np.asarray(raw, dtype=np.float64)
            vec = vec / np.linalg.norm(vec)
            if self.center is not None:
                vec = vec - self.center
            norm = float(np.linalg.norm(vec))
            if norm <= EPS:
                problem = "zero"
            else:
                vec = vec / norm
        if problem is not None and problem != "missing":
            self.counts[f"item_rejected_{problem}"] += 1
        self._ready[item_id] = vec
        return vec

    def observe(self, event: Event) -> str:
        """Apply one event; returns what happened (also counted)."""
        weight = event_weight(event, self.settings)
        if weight <= 0:
            return self._count("zero_weight")
        if self.settings.idf_items:
            weight *= self._idf(event)
        vec = self.item_vector(event.item_id)
        how = "embedded"
        if vec is None:
            if self.settings.fallback == "skip":
                return self._count("no_vector")
            co = self.cooccurrence.setdefault(event.item_id, InterestState())
            mine = self.users.get(event.user_id)
            own = mine.vector() if mine is not None else None
            vec = co.vector()
            if own is not None:  # the item co-occurs with this user's embedded items
                co.add(own, weight, event.ts_ms, 0.0)
            if vec is None:
                return self._count("no_vector")
            how = "fallback"
        state = self.users.setdefault(event.user_id, InterestState())
        state.add(vec, weight, event.ts_ms, self.half_life_ms)
        return self._count(how)

    def _idf(self, event: Event) -> float:
        """1 + log((1 + users so far) / (1 + users who had the item before this event))."""
        had = self.item_users.setdefault(event.item_id, set())
        self.seen_users.add(event.user_id)
        idf = 1.0 + math.log((1 + len(self.seen_users)) / (1 + len(had)))
        had.add(event.user_id)
        return idf

    def _count(self, what: str) -> str:
        self.counts[what] += 1
        return what

    def vectors(self, users: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Unit interest vectors of ``users`` (default: all) that have one."""
        out = {}
        for user in self.users if users is None else users:
            state = self.users.get(user)
            vec = state.vector() if state is not None else None
            if vec is not None:
                out[user] = vec
        return out


def catalogue_center(vectors: Iterable[np.ndarray]) -> np.ndarray | None:
    """The mean of the usable unit item vectors (what ``center_items`` subtracts)."""
    rows = [np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for v in vectors
            if vector_problem(v) is None]
    return np.mean(rows, axis=0) if rows else None


def cooccurrence_smoothed(events: Iterable[Event], item_vectors: Mapping[str, np.ndarray],
                          weight: float) -> dict[str, np.ndarray]:
    """Item vectors pulled toward the items the same users take: the collaborative signal
    brought into the language space (from the events given only, e.g. before a split).

    ``v_i' = unit(unit(v_i) + weight * unit(c_i))`` with ``c_i`` the mean, over the users
    who took item ``i`` (each weighed by ``log(1 + times taken)``), of those users' mean
    unit item vector (same weights). That is ``c = W v`` with ``W = D1⁻¹ Xᵀ D2⁻¹ X``
    row-stochastic over the user × item matrix ``X``: items co-consumed by the same users,
    each user's basket counted once. An item without a usable text vector takes ``unit(c_i)``
    (it co-occurred with embedded items); one without either is left out.
    """
    from scipy import sparse

    counts: Counter[tuple[str, str]] = Counter((e.user_id, e.item_id) for e in events)
    items = sorted({i for _, i in counts} | set(item_vectors))
    if not counts or not items:
        return dict(item_vectors)
    users = sorted({u for u, _ in counts})
    u_index = {u: n for n, u in enumerate(users)}
    i_index = {i: n for n, i in enumerate(items)}
    rows = [u_index[u] for u, _ in counts]
    cols = [i_index[i] for _, i in counts]
    X = sparse.csr_matrix((np.log1p(np.fromiter(counts.values(), dtype=np.float64)),
                           (rows, cols)), shape=(len(users), len(items)))
    dim = len(next(iter(item_vectors.values()))) if item_vectors else 0
    V = np.zeros((len(items), dim))
    has = np.zeros(len(items))
    for item, vec in item_vectors.items():
        if vector_problem(vec) is None:
            V[i_index[item]] = np.asarray(vec, dtype=np.float64) / np.linalg.norm(vec)
            has[i_index[item]] = 1.0
    user_mean = (X @ V) / np.maximum(X @ has, EPS)[:, None]  # each user's basket direction
    takers = np.asarray(X.sum(axis=0)).ravel()
    co = (X.T @ user_mean) / np.maximum(takers, EPS)[:, None]
    co_norm = np.linalg.norm(co, axis=1, keepdims=True)
    co = np.where(co_norm > EPS, co / np.maximum(co_norm, EPS), 0.0)
    mixed = V + weight * co
    norms = np.linalg.norm(mixed, axis=1)
    return {item: mixed[n] / norms[n] for n, item in enumerate(items) if norms[n] > EPS}


def cooccurrence_factors(events: Iterable[Event], dims: int = 64, seed: int = 0,
                         scaled: bool = False) -> dict[str, np.ndarray]:
    """Each item's collaborative factor from the events given (e.g. those before a
    snapshot, as a periodic job would compute them): the TruncatedSVD (``dims``
    components, ``seed``) of the user × item ``log(1 + count) × idf`` matrix, the same
    weighting as ``baselines.cooccurrence_matrix``; an item's factor is its column of
    ``components_`` (times the singular values when ``scaled``), zero-padded to ``dims``
    when fewer components fit. Empty when there are too few users or items for one."""
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD

    counts: Counter[tuple[str, str]] = Counter((e.user_id, e.item_id) for e in events)
    users = sorted({u for u, _ in counts})
    items = sorted({i for _, i in counts})
    n = min(dims, len(users) - 1, len(items) - 1)
    if n < 1:
        return {}
    u_index = {u: k for k, u in enumerate(users)}
    i_index = {i: k for k, i in enumerate(items)}
    cols = np.fromiter((i_index[i] for _, i in counts), dtype=np.int64, count=len(counts))
    rows = np.fromiter((u_index[u] for u, _ in counts), dtype=np.int64, count=len(counts))
    tf = sparse.csr_matrix((np.log1p(np.fromiter(counts.values(), dtype=np.float64)),
                            (rows, cols)), shape=(len(users), len(items)))
    df = np.bincount(cols, minlength=len(items))
    svd = TruncatedSVD(n_components=n, random_state=seed).fit(
        tf @ sparse.diags(np.log(len(users) / df) + 1.0))
    factors = np.zeros((len(items), dims))
    factors[:, :n] = svd.components_.T * (svd.singular_values_ if scaled else 1.0)
    return {item: factors[k] for k, item in enumerate(items)}


def hybrid_item_vectors(text_vectors: Mapping[str, np.ndarray],
                        factors: Mapping[str, np.ndarray], beta: float,
                        dims: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Item vectors ``concat(unit(text_i), beta * unit(f_i))`` over every item with either
    part: a missing (or unusable) text vector or factor gives zeros in its part; an item
    with neither is left out. ``dims`` fixes the (text, factor) parts' lengths (default:
    the vectors' own, 0 for a part with none). ``InterestAggregator`` then weighs and decays
    them as usual."""
    def usable(table: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {item: np.asarray(v, dtype=np.float64) / np.linalg.norm(v)
                for item, v in table.items() if vector_problem(v) is None}

    text, factor = usable(text_vectors), usable(factors)
    text_dim, factor_dim = dims or (len(next(iter(text.values()))) if text else 0,
                                    len(next(iter(factor.values()))) if factor else 0)
    zeros_text, zeros_factor = np.zeros(text_dim), np.zeros(factor_dim)
    return {item: np.concatenate([text.get(item, zeros_text),
                                  beta * factor.get(item, zeros_factor)])
            for item in sorted(text.keys() | factor.keys())}
