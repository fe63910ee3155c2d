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
- **Hierarchy, labels, engagement**: see ``hierarchy``, ``labels``, ``engagement`` in this package.

The whole state round-trips through ``to_dict``/``from_dict`` (JSON-safe) and pickle, and
every random choice is seeded by ``(seed, step)``, so a restored model continues exactly
as the uninterrupted one would.
"""

from __future__ import annotations

import base64
import contextlib
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from threadpoolctl import ThreadpoolController

from segstream.errors import ConfigError
from segstream.segmentation import labels as seg_labels
from segstream.segmentation.hierarchy import family_count, group_centres, stable_families
from segstream.segmentation.ids import match_by_distance, match_by_overlap, spacing

T = TypeVar("T")
STATE_FORMAT = 1
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


@dataclass(frozen=True)
class SegConfig:
    """Clusterer parameters (the service builds them from ``SegmenterSettings``)."""

    k: int = 12
    families: int = 0
    cold_start_factor: int = 10
    half_life_points: float = 20_000.0
    reassignment_ratio: float = 0.01
    hysteresis_margin: float = 0.1
    top_k: int = 3
    id_change_ratio: float = 0.5
    label_terms: int = 3
    description_terms: int = 8
    seed: int = 0
    refit_every: int = 2_000
    refit_sample: int = 2_000
    refit_min_gain: float = 0.02
    normalise: bool = True
    threads: int = 1  # BLAS/OpenMP threads while clustering (small matrices: 1 is fastest)

    @classmethod
    def from_settings(cls, s: Any) -> SegConfig:
        names = [f for f in cls.__dataclass_fields__ if hasattr(s, f)]
        return cls(**{n: getattr(s, n) for n in names})


@dataclass
class Observation:
    """A user's fresh embedding, feature text and current segment (None if unassigned)."""

    key: str
    vector: np.ndarray
    text: str = ""
    previous: str | None = None


@dataclass
class Assignment:
    """Where one observed user belongs now, and why it moved (if it did)."""

    key: str
    segment_id: str
    previous_segment_id: str | None
    changed: bool
    reason: str  # first | moved | previous-retired | stayed
    confidence: float
    memberships: list[tuple[str, float]]
    tier_path: list[str]
    distance: float
    previous_distance: float | None
    margin: float
    text: str = ""


@dataclass
class Segment:
    """A fine segment's identity, lineage and description."""

    id: str
    anchor: np.ndarray
    born_ms: int
    born_version: int
    origin: str  # cold-start | birth | split | refit
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    merged_into: str | None = None
    retired_ms: int | None = None
    retired_version: int | None = None
    family: str | None = None
    size: int = 0
    label: str = "unlabelled"
    description: str = ""
    top_terms: list[str] = field(default_factory=list)
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.retired_ms is None


@dataclass
class Family:
    """A tier-1 interest family: a stable id over a set of fine segments."""

    id: str
    members: set[str]
    born_ms: int
    retired_ms: int | None = None
    label: str = "unlabelled"
    description: str = ""


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
        self._reconcile(self._distance_mapping(), before, now_ms, "refit")
        self._event("refit", "", [], now_ms)
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
            raise ConfigError("the segmenter has not completed its cold start yet")
        x = self._prepare(np.asarray(vector)[None, :])
        return self._assign_one(Observation("", x[0], "", previous), self._dist(x)[0])

    @_limited
    def fit(self, batch: list[Observation], now_ms: int) -> list[Assignment]:
        """Offline: fit from scratch on ``batch`` (k-means++), keeping existing ids where
        centres still match, and assign everyone."""
        X = self._prepare(np.stack([np.asarray(o.vector) for o in batch]))
        if len(X) < self.config.k:
            raise ConfigError(f"need at least k={self.config.k} users to fit, got {len(X)}")
        self.n_seen += len(batch)
        self._fit(X, now_ms, origin="refit" if self.trained else "cold-start", previous=None)
        return self._assign_all(batch, X, now_ms, reset_sizes=True)

    @_limited
    def refit_by_members(self, batch: list[Observation], now_ms: int) -> list[Assignment]:
        """Refit in a new embedding space (another encoder model): ids follow the members
        (each observation's ``previous`` segment), since old and new centres are not
        comparable."""
        X = self._prepare(np.stack([np.asarray(o.vector) for o in batch]))
        if len(X) < self.config.k:
            raise ConfigError(f"need at least k={self.config.k} users to refit, got {len(X)}")
        self._fit(X, now_ms, origin="refit", previous=[o.previous for o in batch])
        return self._assign_all(batch, X, now_ms, reset_sizes=True)

    def drain_events(self) -> list[dict[str, Any]]:
        """Lineage events (birth, split, merge, retire, family-*) since the last drain."""
        events, self.events = self.events, []
        return events

    # ------------------------------------------------------------------ clustering
    def _prepare(self, X: np.ndarray) -> np.ndarray:
        if X.ndim != 2 or not np.isfinite(X).all():
            raise ConfigError("embeddings must be a finite 2-D array")
        X = X.astype(np.float64)
        if self.centres is not None and X.shape[1] != self.centres.shape[1]:
            raise ConfigError(
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
            self._reconcile(mapping, {}, now_ms, origin, reanchor=True)
        else:
            self._reconcile(self._distance_mapping(), before, now_ms, origin)

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
        self._reconcile(self._distance_mapping(), before, now_ms, "birth")

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
    def _distance_mapping(self) -> dict[int, str]:
        """``{slot: id}`` for centres still within reach of an active id's anchor."""
        assert self.centres is not None
        ids = [sid for sid in self.slot_ids if self.segments[sid].active]
        if not ids:
            return {}
        anchors = np.stack([self.segments[sid].anchor for sid in ids])
        tau = self.config.id_change_ratio * spacing(self.centres)
        return {j: ids[i] for j, i in match_by_distance(anchors, self.centres, tau).items()}

    def _reconcile(self, mapping: dict[int, str], before: dict[str, np.ndarray], now_ms: int,
                   origin: str, reanchor: bool = False) -> None:
        assert self.centres is not None
        old_ids = list(self.slot_ids)
        new_ids: list[str] = []
        born: list[int] = []
        for j in range(len(self.centres)):
            sid = mapping.get(j)
            if sid is None:
                sid = f"s{self.next_segment}"
                self.next_segment += 1
                self.segments[sid] = Segment(sid, self.centres[j].copy(), now_ms, self.version,
                                             origin)
                born.append(j)
            elif reanchor:
                self.segments[sid].anchor = self.centres[j].copy()
            new_ids.append(sid)
        self.slot_ids = new_ids
        kept = {j for j in range(len(new_ids)) if j not in born}
        tau2 = 2 * self.config.id_change_ratio * spacing(self.centres)
        for j in born:
            seg = self.segments[new_ids[j]]
            near = self._nearest(self.centres[j], [k for k in kept])
            if origin != "cold-start" and near is not None and near[1] <= tau2:
                seg.origin, seg.parents = "split", [new_ids[near[0]]]
                self.segments[new_ids[near[0]]].children.append(seg.id)
            self._event("split" if seg.origin == "split" else "birth", seg.id, seg.parents,
                        now_ms)
        for sid in old_ids:
            if sid in new_ids:
                continue
            seg = self.segments[sid]
            seg.retired_ms, seg.retired_version = now_ms, self.version
            seg.anchor, seg.terms = np.zeros(0), {}  # label and lineage stay, bulk goes
            near = (self._nearest(before[sid], list(range(len(new_ids))))
                    if sid in before else None)
            if near is not None and near[1] <= tau2 and new_ids[near[0]] != sid:
                seg.merged_into = new_ids[near[0]]
                self._event("merge", sid, [sid], now_ms, into=seg.merged_into)
            else:
                self._event("retire", sid, [], now_ms)
        changed = bool(born) or set(old_ids) != set(new_ids)
        self._rebuild_families(now_ms, regroup=origin == "cold-start" or (
            origin == "refit" and changed))

    def _nearest(self, point: np.ndarray, slots: list[int]) -> tuple[int, float] | None:
        assert self.centres is not None
        if not slots:
            return None
        d = np.linalg.norm(self.centres[slots] - point, axis=1)
        i = int(np.argmin(d))
        return slots[i], float(d[i])

    def _event(self, kind: str, sid: str, parents: list[str], now_ms: int,
               into: str | None = None) -> None:
        self.events.append({"event": kind, "segment_id": sid, "parents": parents,
                            "into": into, "at_ms": now_ms, "centroids_version": self.version})

    def _rebuild_families(self, now_ms: int, regroup: bool = False) -> None:
        """Keep each segment in its family unless another family's centre is closer by the
        hysteresis margin; new segments join the nearest family. A full Ward regrouping
        (ids kept by Jaccard overlap) happens at (re)fits and when a family runs empty."""
        assert self.centres is not None
        n = family_count(self.config.k, self.config.families)
        live = {f.id: f for f in self.families.values() if f.retired_ms is None}
        if not regroup and len(live) == n:
            slot = {sid: j for j, sid in enumerate(self.slot_ids)}
            cents = {}
            for fid, fam in live.items():
                rows = [slot[s] for s in fam.members if s in slot]
                if rows:
                    cents[fid] = self.centres[rows].mean(axis=0)
            if len(cents) == n:
                fids = sorted(cents)
                table = np.stack([cents[f] for f in fids])
                groups: dict[str, set[str]] = {f: set() for f in fids}
                for j, sid in enumerate(self.slot_ids):
                    d = np.linalg.norm(table - self.centres[j], axis=1)
                    best = fids[int(np.argmin(d))]
                    cur = self.segments[sid].family
                    if cur in cents and d[fids.index(cur)] * (
                            1.0 - self.config.hysteresis_margin) <= d[fids.index(best)]:
                        best = cur
                    groups[best].add(sid)
                if all(groups.values()):
                    self._set_families(groups, live, now_ms)
                    return
        idx = group_centres(self.centres, n)
        sets = [{self.slot_ids[j] for j in range(len(idx)) if idx[j] == g}
                for g in sorted(set(idx))]
        previous = {fid: f.members for fid, f in live.items()}
        fams, self.next_family = stable_families(previous, sets, self.next_family)
        self._set_families(fams, live, now_ms)

    def _set_families(self, fams: dict[str, set[str]], live: dict[str, Family],
                      now_ms: int) -> None:
        for fid, members in fams.items():
            if fid in self.families:
                self.families[fid].members = members
            else:
                self.families[fid] = Family(fid, members, now_ms)
                self._event("family-birth", fid, [], now_ms)
            for sid in members:
                self.segments[sid].family = fid
        for fid in live:
            if fid not in fams:
                self.families[fid].retired_ms = now_ms
                self._event("family-retire", fid, [], now_ms)

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
            self._relabel()
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

    def _relabel(self) -> None:
        c = self.config
        active = {sid: self.segments[sid].terms for sid in self.slot_ids}
        ranked = seg_labels.ctfidf(active)
        for sid, terms in ranked.items():
            seg = self.segments[sid]
            if not terms:
                continue  # keep the previous label rather than blanking it
            seg.label, seg.description = seg_labels.label_and_description(
                terms, c.label_terms, c.description_terms)
            seg.top_terms = seg_labels.pick_terms(terms, c.description_terms)
        fam_terms: dict[str, dict[str, float]] = {}
        for fid, fam in self.families.items():
            if fam.retired_ms is not None:
                continue
            merged: dict[str, float] = {}
            for sid in fam.members:
                for t, n in self.segments[sid].terms.items():
                    merged[t] = merged.get(t, 0.0) + n
            fam_terms[fid] = merged
        for fid, terms in seg_labels.ctfidf(fam_terms).items():
            if terms:
                fam = self.families[fid]
                fam.label, fam.description = seg_labels.label_and_description(
                    terms, c.label_terms, c.description_terms)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The complete state as JSON-safe data (arrays as base64 float64)."""
        segs = {}
        for sid, seg in self.segments.items():
            d = asdict(seg)
            d["anchor"] = _enc(seg.anchor)
            segs[sid] = d
        return {
            "format": STATE_FORMAT,
            "config": asdict(self.config),
            "centres": _enc(self.centres), "counts": _enc(self.counts),
            "slot_ids": self.slot_ids, "segments": segs,
            "families": {fid: {**asdict(f), "members": sorted(f.members)}
                         for fid, f in self.families.items()},
            "next_segment": self.next_segment, "next_family": self.next_family,
            "version": self.version, "n_steps": self.n_steps,
            "n_since_reassign": self.n_since_reassign, "n_seen": self.n_seen,
            "inertia": self.inertia, "last_shift": self.last_shift,
            "model_version": self.model_version,
            "buffer": [{"key": o.key, "vector": _enc(o.vector), "text": o.text,
                        "previous": o.previous} for o in self.buffer.values()],
            "events": self.events, "recent": list(self.recent),
            "since_refit": self.since_refit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnlineSegmenter:
        """Rebuild a segmenter from ``to_dict`` output."""
        if data.get("format") != STATE_FORMAT:
            raise ConfigError(f"unknown segmenter state format {data.get('format')!r}")
        self = cls(SegConfig(**data["config"]))
        self.centres, self.counts = _dec(data["centres"]), _dec(data["counts"])
        self.slot_ids = list(data["slot_ids"])
        for sid, d in data["segments"].items():
            vec = _dec(d.pop("anchor"))
            assert vec is not None
            self.segments[sid] = Segment(anchor=vec, **d)
        for fid, d in data["families"].items():
            self.families[fid] = Family(**{**d, "members": set(d["members"])})
        for name in ("next_segment", "next_family", "version", "n_steps", "n_since_reassign",
                     "n_seen", "inertia", "last_shift", "model_version", "events"):
            setattr(self, name, data[name])
        self.recent = dict.fromkeys(data.get("recent", []))
        self.since_refit = int(data.get("since_refit", 0))
        for o in data["buffer"]:
            vec = _dec(o["vector"])
            assert vec is not None
            self.buffer[o["key"]] = Observation(o["key"], vec, o["text"], o["previous"])
        return self


def _memberships(dist: np.ndarray) -> np.ndarray:
    """Fuzzy c-means memberships (m = 2): weights proportional to 1 / distance²."""
    inv = 1.0 / np.maximum(dist, 1e-9) ** 2
    return inv / inv.sum(axis=1, keepdims=True)


def _enc(a: np.ndarray | None) -> dict[str, Any] | None:
    if a is None:
        return None
    a = np.ascontiguousarray(a, dtype="<f8")
    return {"shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _dec(d: dict[str, Any] | None) -> np.ndarray | None:
    if d is None:
        return None
    raw = base64.b64decode(d["b64"])
    return np.frombuffer(raw, dtype="<f8").reshape(d["shape"]).copy()
