"""Test-only crash points at the numbered steps of each service's commit order.

``SEGSTREAM_CRASH_AT=<service>:<step>[@<n>]`` (e.g. ``segmenter:3@2``) makes the ``n``-th
arrival (default: the first) of this process at step ``step`` of ``service`` end the
process at once with ``os._exit(137)`` — what SIGKILL does to it: no ``finally``, no
flush, no commit. The fault tests (tests/integration/test_faults.py,
test_crash_matrix.py) use it to kill a service exactly between two steps; it is never set
in production, where ``reached`` is one dictionary lookup. The steps are those numbered
in ``IngestService.handle_batch``, ``EncoderWorker.process`` and ``SegmentStateWriter.commit``.
"""

from __future__ import annotations

import os
from collections import Counter

ENV = "SEGSTREAM_CRASH_AT"
_arrivals: Counter[tuple[str, int]] = Counter()


def _target() -> tuple[str, int, int] | None:
    raw = os.environ.get(ENV)
    if not raw:
        return None
    where, _, nth = raw.partition("@")
    service, _, step = where.partition(":")
    return service, int(step), int(nth or 1)


def reached(service: str, step: int) -> None:
    """Mark that ``service`` is about to perform ``step``; exit if this is the crash point."""
    target = _target()
    if target is None or target[:2] != (service, step):
        return
    _arrivals[service, step] += 1
    if _arrivals[service, step] == target[2]:
        os._exit(137)
