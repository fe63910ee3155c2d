"""The clusterer's value types: its configuration, what goes in, what comes out, and the
identity records it keeps per segment and family (no behaviour beyond small helpers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
