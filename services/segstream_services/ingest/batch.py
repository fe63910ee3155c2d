"""What one ingest batch carries between the steps of its commit order, and the counts
of a run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from segstream.feature_store import PendingEvent


@dataclass
class Cleaned:
    """A valid event that a cleaning rule drops."""

    rule: str
    detail: str


@dataclass
class BatchResult:
    """Counts of one processed batch (also what tests and the benchmark read)."""

    records: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    users: int = 0
    marked: int = 0


@dataclass
class RunStats:
    """What ``run`` did; ``first_at``/``last_at`` (monotonic) bound the busy period."""

    records: int = 0
    batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    first_at: float | None = None
    last_at: float | None = None

    @property
    def rate(self) -> float:
        """Records per second from the first polled batch to the last one done."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return self.records / (self.last_at - self.first_at)


@dataclass
class Prepared:
    """A batch after step 1: its records, the events per user, the counts so far."""

    records: Sequence[Any]
    by_user: dict[str, list[PendingEvent]]
    result: BatchResult
