"""The clusterer's state as JSON-safe data and back (``OnlineSegmenter.to_dict``/``from_dict``).

Arrays travel as base64 little-endian float64 with their shape, so a restored model is
bit-identical and continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from segstream.errors import StateError
from segstream.segmentation.types import Family, Observation, SegConfig, Segment

if TYPE_CHECKING:
    from segstream.segmentation.core import OnlineSegmenter

STATE_FORMAT = 1
_SCALARS = ("next_segment", "next_family", "version", "n_steps", "n_since_reassign", "n_seen",
            "inertia", "last_shift", "model_version", "events")


def to_dict(model: OnlineSegmenter) -> dict[str, Any]:
    """The complete state of ``model`` as JSON-safe data."""
    segs = {}
    for sid, seg in model.segments.items():
        d = asdict(seg)
        d["anchor"] = _enc(seg.anchor)
        segs[sid] = d
    return {
        "format": STATE_FORMAT,
        "config": asdict(model.config),
        "centres": _enc(model.centres), "counts": _enc(model.counts),
        "slot_ids": model.slot_ids, "segments": segs,
        "families": {fid: {**asdict(f), "members": sorted(f.members)}
                     for fid, f in model.families.items()},
        **{name: getattr(model, name) for name in _SCALARS},
        "buffer": [{"key": o.key, "vector": _enc(o.vector), "text": o.text,
                    "previous": o.previous} for o in model.buffer.values()],
        "recent": list(model.recent),
        "since_refit": model.since_refit,
    }


def from_dict(cls: type[OnlineSegmenter], data: dict[str, Any]) -> OnlineSegmenter:
    """Rebuild a segmenter of class ``cls`` from ``to_dict`` output."""
    if data.get("format") != STATE_FORMAT:
        raise StateError(f"unknown segmenter state format {data.get('format')!r}")
    model = cls(SegConfig(**data["config"]))
    model.centres, model.counts = _dec(data["centres"]), _dec(data["counts"])
    model.slot_ids = list(data["slot_ids"])
    for sid, d in data["segments"].items():
        vec = _dec(d.pop("anchor"))
        assert vec is not None
        model.segments[sid] = Segment(anchor=vec, **d)
    for fid, d in data["families"].items():
        model.families[fid] = Family(**{**d, "members": set(d["members"])})
    for name in _SCALARS:
        setattr(model, name, data[name])
    model.recent = dict.fromkeys(data.get("recent", []))
    model.since_refit = int(data.get("since_refit", 0))
    for o in data["buffer"]:
        vec = _dec(o["vector"])
        assert vec is not None
        model.buffer[o["key"]] = Observation(o["key"], vec, o["text"], o["previous"])
    return model


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
