"""The online clusterer behind the segmenter: pure Python + numpy/scikit-learn, no I/O.

``OnlineSegmenter.observe`` takes a batch of fresh user embeddings and returns one
``Assignment`` per user. Inside:

- **Cold start**: embeddings are buffered until ``cold_start_factor * k`` distinct users,
  then MiniBatchKMeans (k-means++ init) is fitted on the buffer.
- **Online update**: every later batch is one ``MiniBatchKMeans.partial_fit`` step on an
  estimator rebuilt from the stored centres and per-centre counts. With a half-life
  (``half_life_points``, in observed embeddings) the counts are decayed before each step,
  as Spark's StreamingKMeans decayFactor does, so centres keep following the population.
- **Stable ids**: after each step or refit, centres are matched to the ids' anchor
  centroids (Hungarian); a centre farther than ``id_change_ratio`` times the typical gap
  between centres means something new: it gets a fresh id (ids are never reused), the old
  id is retired or merged, and the lineage records it.
- **Hierarchy, labels, engagement**: see ``hierarchy``, ``labels``, ``engagement`` in this
  package; value types are in ``types``, id matching and lineage in ``lineage``.

The whole state round-trips through ``to_dict``/``from_dict`` (JSON-safe, see ``state``) and
pickle, and every random choice is seeded by ``(seed, step)``, so a restored model continues
exactly as the uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from threadpoolctl import ThreadpoolController

from segstream.errors import ConfigError, DataError, StateError
from segstream.segmentation import labels as seg_labels
from segstream.segmentation import state
from segstream.segmentation.ids import match_by_overlap
from segstream.segmentation.lineage import distance_mapping, reconcile
from segstream.segmentation.types import Assignment, Family, Observation, SegConfig, Segment

__all__ = ["Assignment", "Family", "Observation", "OnlineSegmenter", "SegConfig", "Segment"]
T = TypeVar("T")
_EPS = 1e-12
_POOLS: list[ThreadpoolController] = []


def _threads(n: int) -> Any:
    """Limit BLAS and OpenMP pools to ``n`` threads inside the block (0 = leave alone).

    Oversubscribed pools make the tiny matrix products of an online step 10x slower on a
    busy machine, so the clusterer runs single-threaded by default."""
    if n <= 0:
        return contextlib.nullcontext()
    if not _POOLS:
        _POOLS.append(ThreadpoolController())
    return _POOLS[0].limit(limits=n)


def _limited(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: OnlineSegmenter, *args: Any, **kwargs: Any) -> T:
        with _threads(self.config.threads):
            return method(self, *args, **kwargs)
    return wrapper


class OnlineSegmenter:
    """Online MiniBatchKMeans with cold start, forgetting, stable ids, lineage and labels."""

    def __init__(self, config: SegConfig) -> None:
        if config.k < 2:
            raise ConfigError(f"k must be at least 2, got {config.k}")
        self.config = config
        self.centres: np.ndarray | None = None
        self.counts: np.ndarray | None = None
        self.slot_ids: list[str] = []
        self.segments: dict[str, Segment] = {}
        self.families: dict[str, Family] = {}
        self.next_segment = 1
        self.next_family = 1
        self.version = 0  # centroids version: +1 per update or refit
        self.n_steps = 0
        self.n_since_reassign = 0
        self.n_seen = 0
        self.inertia = 0.0  # EWMA of the mean squared distance before each step
        self.last_shift = 0.0
        self.model_version: str | None = None
        self.buffer: dict[str, Observation] = {}
        self.events: list[dict[str, Any]] = []
        self.recent: dict[str, None] = {}  # most recently observed users, oldest first
        self.since_refit = 0

    # ------------------------------------------------------------------ public API
    @property
    def trained(self) -> bool:
        return self.centres is not None

    @property
    def cold_start_size(self) -> int:
        return self.config.cold_start_factor * self.config.k

    def active_ids(self) -> list[str]:
        return list(self.slot_ids)

    @_limited
    def observe(self, batch: list[Observation], now_ms: int) -> list[Assignment]:
        """Update the model with ``batch`` and assign its users (nothing until cold start
        completes, then every buffered user at once)."""
        if not batch:
            return []
        X = self._prepare(np.stack([np.asarray(o.vector) for o in batch]))
        self.n_seen += len(batch)
        self._remember(batch)
        if self.centres is None:
            for o, x in zip(batch, X, strict=True):
                self.buffer[o.key] = Observation(o.key, x, o.text, o.previous)
            if len(self.buffer) < self.cold_start_size:
                return []
            batch = list(self.buffer.values())
            X = np.stack([o.vector for o in batch])
            self.buffer = {}
            self._fit(X, now_ms, origin="cold-start", previous=None)
        else:
            self._step(X, now_ms)
            self.since_refit += len(batch)
        return self._assign_all(batch, X, now_ms)

    @property
    def maintenance_due(self) -> bool:
        """True when ``refit_every`` embeddings arrived since the last maintenance refit."""
        return (self.trained and self.config.refit_every > 0
                and self.since_refit >= self.config.refit_every)

    def recent_keys(self) -> list[str]:
        """The users (up to ``refit_sample``) a maintenance refit should look at."""
        return list(self.recent)

    @_limited
    def maintain(self, batch: list[Observation], now_ms: int) -> list[Assignment]:
        """Maintenance refit on the recent users' current embeddings.

        Online k-means can settle in a poor local optimum (two personas sharing a centre,
        one persona split in two) that small steps never leave. Here the current centres
        (refined by Lloyd iterations) compete with a fresh k-means++ fit on the sample; the
        best replaces the model only if it lowers the sample's inertia by
        ``refit_min_gain``. Ids follow the anchors as after any step, so segments that kept
        their meaning keep their ids; the others are born, split, merged or retired with
        lineage. Returns assignments of the sample's users (empty when nothing changed).
        """
        self.since_refit = 0
        if not self.trained or len(batch) < 2 * self.config.k:
            return []
        assert self.centres is not None and self.counts is not None
        X = self._prepare(np.stack([np.asarray(o.vector) for o in batch]))
        current = float((self._dist(X) ** 2).min(axis=1).sum())
        rs = np.random.RandomState([self.config.seed, self.version, 1])
        fits = [KMeans(self.config.k, init=self.centres, n_init=1).fit(X),
                KMeans(self.config.k, init="k-means++", n_init=10, random_state=rs).fit(X)]
        best = min(fits, key=lambda km: km.inertia_)
        if best.inertia_ > (1.0 - self.config.refit_min_gain) * current:
            return []
        before = self._positions()
        total = float(self.counts.sum())
        self.centres = best.cluster_centers_.astype(np.float64)
        share = np.bincount(best.labels_, minlength=self.config.k) / len(X)
        self.counts = share * total
        self.version += 1
        reconcile(self, distance_mapping(self), before, now_ms, "refit")
        self.record_event("refit", "", [], now_ms)
        return self._assign_all(batch, X, now_ms)

    def _remember(self, batch: list[Observation]) -> None:
        cap = self.config.refit_sample
        for o in batch:
            self.recent.pop(o.key, None)
            self.recent[o.key] = None
        while len(self.recent) > cap:
            del self.recent[next(iter(self.recent))]

    @_limited
    def assign(self, vector: np.ndarray, previous: str | None = None) -> Assignment:
        """Assign one embedding without updating anything (read-only)."""
        if self.centres is None:
            raise StateError("the segmenter has not completed its cold start yet")
        x = self._prepare(np.asarray(vector)[None, :])
        return self._assign_one(Observation("", x[0], "", previous), self._dist(x)[0])

    @_limited
    def assign_many(self, observations: list[Observation]) -> list[Assignment]:
        """Assign each observation as ``assign`` would (hysteresis against its
        ``previous`` segment), in one matrix product; updates nothing (read-only)."""
        if self.centres is None:
            raise StateError("the segmenter has not completed its cold start yet")
        if not observations:
            return []
        X = self._prepare(np.stack([np.asarray(o.vector) for o in observations]))
        dist = self._dist(X)
        weights = _memberships(dist)
        slot_of = {sid: j for j, sid in enumerate(self.slot_ids)}
        return [self._assign_one(o, d, w, slot_of)
                for o, d, w in zip(observations, dist, weights, strict=True)]

    @_limited
    def fit(self, batch: list[Observation], now_ms: int) -> list[Assignment]:
        """Offline: fit from scratch on ``batch`` (k-means++), keeping existing ids where
        centres still match, and assign everyone."""
        X = self._prepare(np.stack([np.asarray(o.vector) for o in batch]))
        if len(X) < self.config.k:
            raise DataError(f"need at least k={self.config.k} users to fit, got {len(X)}")
        self.n_seen += len(batch)
        self._fit(X, now_ms, origin="refit" if self.trained else "cold-start", previous=None)
        return self._assign_all(batch, X, now_ms, reset_sizes=True)

    @_limited
    def refit_by_members(self, batch: list[Observation], now_ms: int) -> list[Assignment]:
        """Refit in a new embedding space (another encoder model): ids follow the members
        (each observation's ``previous`` segment), since old and new centres are not
        comparable (nor of the same length: a model with item factors is wider)."""
        X = self._prepare(np.stack([np.asarray(o.vector) for o in batch]), new_space=True)
        if len(X) < self.config.k:
            raise DataError(f"need at least k={self.config.k} users to refit, got {len(X)}")
        self._fit(X, now_ms, origin="refit", previous=[o.previous for o in batch])
        return self._assign_all(batch, X, now_ms, reset_sizes=True)

    def drain_events(self) -> list[dict[str, Any]]:
        """Lineage events (birth, split, merge, retire, family-*) since the last drain."""
        events, self.events = self.events, []
        return events

    # ------------------------------------------------------------------ clustering
    def _prepare(self, X: np.ndarray, new_space: bool = False) -> np.ndarray:
        if X.ndim != 2 or not np.isfinite(X).all():
            raise DataError("embeddings must be a finite 2-D array")
        X = X.astype(np.float64)
        if not new_space and self.centres is not None and X.shape[1] != self.centres.shape[1]:
            raise DataError(
                f"embedding dimension {X.shape[1]} != model dimension {self.centres.shape[1]}")
        if self.config.normalise:
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), _EPS)
        return X

    def _fit(self, X: np.ndarray, now_ms: int, origin: str,
             previous: list[str | None] | None) -> None:
        km = KMeans(n_clusters=self.config.k, init="k-means++", n_init=10,
                    random_state=np.random.RandomState([self.config.seed, self.version])
                    ).fit(X)
        before = self._positions()
        self.centres = km.cluster_centers_.astype(np.float64)
        labels = km.predict(X)
        self.counts = np.bincount(labels, minlength=self.config.k).astype(np.float64)
        self.n_since_reassign = 0
        self.version += 1
        if previous is not None:
            mapping = match_by_overlap(previous, labels)
            reconcile(self, mapping, {}, now_ms, origin, reanchor=True)
        else:
            reconcile(self, distance_mapping(self), before, now_ms, origin)

    def _step(self, X: np.ndarray, now_ms: int) -> None:
        assert self.centres is not None and self.counts is not None
        n = len(X)
        factor = self._decay_factor(n)
        self.counts *= factor
        if factor < 1.0:
            for sid in self.slot_ids:
                seg_labels.decay(self.segments[sid].terms, factor)
        before = self._positions()
        old = self.centres.copy()
        d2 = (self._dist(X) ** 2).min(axis=1).mean()
        self.inertia = float(d2) if self.n_steps == 0 else 0.9 * self.inertia + 0.1 * float(d2)
        km = self._estimator(n)
        km.partial_fit(X)
        self.centres = km.cluster_centers_.astype(np.float64)
        self.counts = km._counts.astype(np.float64)
        self.n_since_reassign = int(km._n_since_last_reassign)
        self.n_steps += 1
        self.version += 1
        self.last_shift = float(np.linalg.norm(self.centres - old, axis=1).max())
        reconcile(self, distance_mapping(self), before, now_ms, "birth")

    def _decay_factor(self, n: int) -> float:
        h = self.config.half_life_points
        return 0.5 ** (n / h) if h > 0 else 1.0

    def _estimator(self, n: int) -> MiniBatchKMeans:
        """A MiniBatchKMeans whose fitted state is ours, ready for one ``partial_fit``."""
        assert self.centres is not None and self.counts is not None
        km = MiniBatchKMeans(n_clusters=self.config.k, init=self.centres, n_init=1,
                             batch_size=n, compute_labels=False,
                             reassignment_ratio=self.config.reassignment_ratio)
        km.cluster_centers_ = self.centres.copy()
        km._counts = self.counts.copy()
        km._n_since_last_reassign = self.n_since_reassign
        km._batch_size = n
        km._n_threads = 1
        km._random_state = np.random.RandomState([self.config.seed, self.n_steps])
        km.n_steps_ = self.n_steps
        km.n_features_in_ = self.centres.shape[1]
        return km

    def _dist(self, X: np.ndarray) -> np.ndarray:
        assert self.centres is not None
        c = self.centres
        d2 = (X * X).sum(axis=1)[:, None] - 2.0 * X @ c.T + (c * c).sum(axis=1)[None, :]
        return np.sqrt(np.maximum(d2, 0.0))

    def _positions(self) -> dict[str, np.ndarray]:
        if self.centres is None:
            return {}
        return {sid: self.centres[j].copy() for j, sid in enumerate(self.slot_ids)}

    # ------------------------------------------------------------------ ids and lineage
    def record_event(self, kind: str, sid: str, parents: list[str], now_ms: int,
                     into: str | None = None) -> None:
        """Queue a lineage event for ``drain_events``."""
        self.events.append({"event": kind, "segment_id": sid, "parents": parents,
                            "into": into, "at_ms": now_ms, "centroids_version": self.version})

    def tier_path(self, sid: str) -> list[str]:
        fam = self.segments[sid].family
        return [fam, sid] if fam else [sid]

    # ------------------------------------------------------------------ assignment
    def _assign_all(self, batch: list[Observation], X: np.ndarray, now_ms: int,
                    reset_sizes: bool = False) -> list[Assignment]:
        if reset_sizes:
            for seg in self.segments.values():
                seg.size = 0
        dist = self._dist(X)
        weights = _memberships(dist)
        slot_of = {sid: j for j, sid in enumerate(self.slot_ids)}
        out = []
        texts = False
        for o, d, w in zip(batch, dist, weights, strict=True):
            a = self._assign_one(o, d, w, slot_of)
            if a.changed or reset_sizes:
                if o.previous in self.segments and not reset_sizes:
                    prev = self.segments[o.previous]
                    prev.size = max(0, prev.size - 1)
                self.segments[a.segment_id].size += 1
            if o.text:
                seg_labels.add_text(self.segments[a.segment_id].terms, o.text)
                texts = True
            out.append(a)
        if texts or reset_sizes:
            seg_labels.relabel(self)
        return out

    def _assign_one(self, o: Observation, d: np.ndarray, w: np.ndarray | None = None,
                    slot_of: dict[str, int] | None = None) -> Assignment:
        if w is None:
            w = _memberships(d[None, :])[0]
        if slot_of is None:
            slot_of = {sid: j for j, sid in enumerate(self.slot_ids)}
        best = int(np.argmin(d))
        prev_slot = slot_of.get(o.previous) if o.previous else None
        chosen = best
        if (prev_slot is not None and prev_slot != best
                and d[best] > (1.0 - self.config.hysteresis_margin) * d[prev_slot]):
            chosen = prev_slot
        sid = self.slot_ids[chosen]
        if o.previous is None:
            reason = "first"
        elif prev_slot is None:
            reason = "previous-retired"
        else:
            reason = "moved" if chosen != prev_slot else "stayed"
        top = np.argsort(-w, kind="stable")[: self.config.top_k]
        if prev_slot is not None:
            prev_d: float | None = float(d[prev_slot])
            margin = float(d[prev_slot] - d[chosen])
        else:
            prev_d = None
            second = float(np.partition(d, 1)[1]) if len(d) > 1 else float(d[best])
            margin = second - float(d[chosen])
        return Assignment(
            key=o.key, segment_id=sid, previous_segment_id=o.previous,
            changed=sid != o.previous, reason=reason, confidence=float(w[chosen]),
            memberships=[(self.slot_ids[j], float(w[j])) for j in top],
            tier_path=self.tier_path(sid), distance=float(d[chosen]),
            previous_distance=prev_d, margin=margin, text=o.text)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The complete state as JSON-safe data (see ``state``)."""
        return state.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnlineSegmenter:
        """Rebuild a segmenter from ``to_dict`` output."""
        return state.from_dict(cls, data)


def _memberships(dist: np.ndarray) -> np.ndarray:
    """Fuzzy c-means memberships (m = 2): weights proportional to 1 / distance²."""
    inv = 1.0 / np.maximum(dist, 1e-9) ** 2
    return inv / inv.sum(axis=1, keepdims=True)
