"""segstream: real-time, language-model-based user interest segmentation.

Data flow: ingest → profile → encode → segment → publish. This package (the repo's
``shared/`` folder) is the library the services share; ``segstream_services`` (the repo's
``services/`` folder) holds the deployable services and the ``segstream`` CLI.
"""

__version__ = "0.1.0"

# The recommender-facing API, importable as ``from segstream import SegmentClient``; loaded
# on first use so that ``import segstream`` stays cheap for the services.
_CLIENT = ("SegmentClient", "Subscription", "Change", "ChangeRecord", "Assignment",
           "UserSegment", "Segment", "MembersPage", "VectorStatus")
__all__ = ["__version__", *_CLIENT]


def __getattr__(name: str) -> object:
    if name in _CLIENT:
        from segstream import client

        return getattr(client, name)
    raise AttributeError(f"module 'segstream' has no attribute {name!r}")
