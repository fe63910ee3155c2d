"""Typed records of segstream's read surface (``segstream.client`` and ``segstream serve``).

``ChangeRecord`` and ``CatalogEntry`` mirror the JSON Schemas shipped in
``segstream/schemas`` field for field (``tests/unit/test_client_models.py`` checks that the
names, the required fields and real records agree); an ``Assignment`` (the value on the
compacted ``segstream.assignments`` topic) is a change record. ``UserSegment`` is what a
recommender reads for one user, ``Segment`` a catalog entry with its exact member count.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SegmentId = str
EngagementTier = Literal["new", "active", "loyal", "at-risk", "dormant"]
_SEG = r"^s[0-9]+$"
_NODE = r"^[fs][0-9]+$"
MAX_USER_ID = 128  # the input contract's limit on user ids


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Membership(_Record):
    """A soft membership: a segment and its weight (weights of a user sum to at most 1)."""

    segment_id: SegmentId = Field(pattern=_SEG)
    weight: float = Field(ge=0, le=1)


class TextChanges(_Record):
    """Sentences of the feature text added and removed since the previous change."""

    added: list[str]
    removed: list[str]


class Explanation(_Record):
    """Why the user is where they are: distances and what changed in their profile."""

    reason: Literal["first", "moved", "previous-retired"]
    distance: float = Field(ge=0)
    previous_distance: float | None = Field(default=..., ge=0)
    distance_margin: float
    text_changes: TextChanges


class ChangeRecord(_Record):
    """One record of the ``segstream.segments`` change feed (schema version 1)."""

    schema_version: Literal[1]
    user_id: str = Field(min_length=1, max_length=MAX_USER_ID)
    segment_id: SegmentId = Field(pattern=_SEG)
    tier_path: list[str] = Field(min_length=1, max_length=2)
    label: str = Field(min_length=1)
    confidence: float = Field(ge=0, le=1)
    memberships: list[Membership] = Field(min_length=1)
    previous_segment_id: SegmentId | None
    explanation: Explanation
    engagement_tier: EngagementTier
    model_version: str = Field(min_length=1)
    centroids_version: int = Field(ge=1)
    event_time: datetime
    emitted_at: datetime


Assignment = ChangeRecord
"""A value of the compacted ``segstream.assignments`` topic: the user's latest change."""


class Lineage(_Record):
    """Where a segment came from and where it went; ids are never reused."""

    born_at: datetime
    origin: Literal["cold-start", "birth", "split", "refit", "family"]
    parents: list[str]
    split_from: SegmentId | None
    merged_into: SegmentId | None
    retired_at: datetime | None


class LineageEvent(_Record):
    """The lineage event that caused a catalog publication."""

    event: Literal["birth", "split", "merge", "retire", "family-birth", "family-retire"]
    parents: list[str] = Field(default_factory=list)
    into: str | None = None
    at: datetime


class CatalogEntry(_Record):
    """One segment (tier 2) or interest family (tier 1) of the ``segstream.catalog``."""

    schema_version: Literal[1]
    segment_id: str = Field(pattern=_NODE)
    tier: Literal[1, 2]
    tier_path: list[str] = Field(min_length=1, max_length=2)
    status: Literal["active", "retired"]
    label: str = Field(min_length=1)
    description: str
    top_terms: list[str]
    size: int = Field(ge=0)
    children: list[str]
    centroids_version: int = Field(ge=1)
    model_version: str | None
    lineage: Lineage
    event: LineageEvent | None = None
    updated_at: datetime


class Segment(CatalogEntry):
    """A catalog entry with ``members``: the exact number of users whose current segment it
    is (tier 2; for a family the sum over its segments). ``size`` is the clusterer's
    decayed weight, which follows recent traffic rather than counting users."""

    members: int = Field(ge=0)


class UserSegment(_Record):
    """A user's current segment as the segmenter stored it."""

    user_id: str
    segment_id: SegmentId
    label: str
    confidence: float = Field(ge=0, le=1)
    memberships: list[Membership]
    tier_path: list[str]
    tier_labels: list[str]
    engagement_tier: EngagementTier | None
    model_version: str | None
    centroids_version: int
    updated_at: datetime | None


class VectorStatus(_Record):
    """Whether a user's embedding is current, read from Redis alone (no service needed).

    ``current``: there is a vector, it embeds the user's present feature text (when the
    text view has a weight), the user is not waiting for the encoder, and it was made by
    ``serving_model_version`` (the rollout registry's active model, else the one the
    segment catalog was built with; None when neither is known, and then the model does
    not count against ``current``). ``interest_at``: when the interest view in the vector
    was computed; ``text_embedded_at``: when the feature text was last embedded (the text
    view lags on its own schedule).
    """

    user_id: str
    present: bool
    model_version: str | None
    embedded_at: datetime | None
    text_is_embedded: bool
    queued_for_encoding: bool
    serving_model_version: str | None
    model_is_serving: bool | None
    current: bool
    interest_at: datetime | None = None
    text_embedded_at: datetime | None = None


class MembersPage(_Record):
    """One page of a segment's members (user ids in byte order); ``next_cursor`` is None on
    the last page. Pages never repeat or skip a user who stays in the segment meanwhile."""

    segment_id: str
    members: list[str]
    next_cursor: str | None


class Change:
    """One record from ``SegmentClient.subscribe``; call ``ack()`` once it is handled.

    ``record`` is None for a tombstone (the user was forgotten; assignments topic only).
    ``ack()`` commits this record's offset + 1 for its partition, so acknowledging a record
    also acknowledges the earlier ones of the same partition.
    """

    __slots__ = ("_ack", "offset", "partition", "record", "topic", "user_id")

    def __init__(self, user_id: str, record: ChangeRecord | None, topic: str, partition: int,
                 offset: int, ack: Callable[[], None]) -> None:
        self.user_id, self.record = user_id, record
        self.topic, self.partition, self.offset = topic, partition, offset
        self._ack = ack

    def ack(self) -> None:
        self._ack()

    def __repr__(self) -> str:
        what = self.record.segment_id if self.record else "tombstone"
        return f"Change({self.user_id!r} -> {what}, {self.topic}[{self.partition}]@{self.offset})"


def encode_cursor(last_member: bytes) -> str:
    """An opaque page cursor (URL-safe) from the last member of a page."""
    return base64.urlsafe_b64encode(last_member).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> bytes:
    """The member a cursor stands for; ``ValueError`` for anything not made by us."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"invalid cursor {cursor[:40]!r}") from None
    if not raw or len(raw) > 4 * MAX_USER_ID:
        raise ValueError(f"invalid cursor {cursor[:40]!r}")
    return raw


def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``segstream/schemas`` (``segment_change``, ``catalog_entry``,
    ``assignment``)."""
    text = resources.files("segstream").joinpath(f"schemas/{name}.schema.json").read_text()
    return json.loads(text)
