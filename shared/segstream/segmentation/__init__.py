"""**segment**: the online clusterer and what it derives for each segment.

- ``core``: ``OnlineSegmenter`` (online MiniBatchKMeans with forgetting);
- ``types``: ``SegConfig``, ``Observation``, ``Assignment``, ``Segment``, ``Family``;
- ``lineage``: which centre keeps which id, births, splits, merges, retirements;
- ``state``: the model as JSON-safe data and back;
- ``ids``: matching centres to ids (Hungarian, member overlap);
- ``hierarchy``: interest families (tier 1) over fine segments;
- ``labels``: c-TF-IDF labels and descriptions from members' texts;
- ``engagement``: the RFM engagement tier, a separate axis from interest.
"""

from segstream.segmentation.core import OnlineSegmenter
from segstream.segmentation.types import Assignment, Family, Observation, SegConfig, Segment

__all__ = ["Assignment", "Family", "Observation", "OnlineSegmenter", "SegConfig", "Segment"]
