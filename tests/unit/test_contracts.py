"""The contracts as code: Redis keys, the encoder → segmenter stream entry, output records."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from redis.crc import key_slot

from segstream.features import Rfm, UserState, increments, summarize
from segstream.keys import Keys
from segstream.records import (
    RecordContractError,
    build_change_record,
    catalog_entries,
    change_record,
    validate,
    with_event,
)
from segstream.segmentation import Assignment, Observation, OnlineSegmenter, SegConfig
from segstream.stream_entry import FIELDS, EmbeddedEntry

ROOT = Path(__file__).resolve().parents[2]
PER_USER = {"features", "dedup", "titles", "text", "rfm", "interest", "emb", "emb_next",
            "emb_prev", "emb_swap", "seg", "seg_text"}
QUEUE = {"dirty", "claims", "claim_meta", "fence", "embedded", "items_dirty", "text_due"}
SEGMENTER = {"seg_state", "seg_catalog", "seg_lock"}
PER_SEGMENT = {"seg_members"}  # segmenter-wide slot too: one MULTI writes them all
ALONE = {"model_registry", "model_prev_state", "model_prev_ids", "state_epoch"}
PER_ITEM = {"item", "item_center"}  # one argument: an item id, a model version
CACHE = {"cache_vector", "cache_seen", "item_vec"}
HELPERS = {"text_pattern", "user_of_text", "user_keys"}


def _key_methods() -> set[str]:
    return {n for n, _ in inspect.getmembers(Keys, inspect.isfunction) if not n.startswith("_")}


def test_every_key_method_is_classified_and_its_group_shares_a_slot() -> None:
    assert _key_methods() == PER_USER | QUEUE | SEGMENTER | PER_SEGMENT | ALONE | PER_ITEM | \
        CACHE | HELPERS  # a new key must be classified here (and so get its slot checked)
    keys = Keys("ss")
    assert sorted(keys.user_keys("u")) == sorted(getattr(keys, m)("u") for m in PER_USER)
    for uid in ("u1", "user:with:colons", "ünï", "x}y"):
        slots = {key_slot(getattr(keys, m)(uid).encode()) for m in PER_USER}
        assert len(slots) == 1, uid  # one Lua call / pipeline may touch them together
    assert len({key_slot(getattr(keys, m)().encode()) for m in QUEUE}) == 1
    assert len({key_slot(getattr(keys, m)().encode()) for m in SEGMENTER} |
               {key_slot(getattr(keys, m)(sid).encode()) for m in PER_SEGMENT
                for sid in ("s1", "f2")}) == 1
    every = [getattr(keys, m)("u") for m in PER_USER] + \
        [getattr(keys, m)() for m in QUEUE | SEGMENTER | ALONE] + \
        [getattr(keys, m)("s1") for m in PER_SEGMENT] + \
        [getattr(keys, m)("i1") for m in PER_ITEM] + \
        [getattr(keys, m)("model@1", "abc") for m in CACHE]
    assert len(set(every)) == len(every)  # no two keys collide
    assert all(k.startswith(("ss:", "{ss:")) for k in every)  # the ACL prefix holds
    assert keys.text("u:1") == "ss:u:{u:1}:text"  # the layout deployed data has


def test_text_key_scan_pattern_round_trips_the_user_id() -> None:
    keys = Keys("p.1")
    for uid in ("u1", "a:b", "ü*"):
        assert keys.user_of_text(keys.text(uid).encode()) == uid
    with pytest.raises(ValueError, match="not a text key"):
        keys.user_of_text("p.1:u:{u1}:emb")


_KEY_SHAPES = re.compile(r"\{PREFIX\}:|:u:\{|\{PREFIX:|:q\}|:seg\}|(^|:)e[cs]:\{")


def _builds_a_key(node: ast.JoinedStr) -> bool:
    """An f-string that puts a key prefix in front of a colon, or has a key layout's
    hash-tag marks (``:u:{``, ``:q}``, ``:seg}``, cache ``ec:``/``es:``)."""
    parts = []
    for v in node.values:
        if isinstance(v, ast.Constant):
            parts.append(str(v.value))
        elif isinstance(v, ast.FormattedValue):
            name = ast.unparse(v.value).rsplit(".", 1)[-1]
            parts.append("{PREFIX}" if name in ("prefix", "key_prefix") else "{X}")
    return bool(_KEY_SHAPES.search("".join(parts)))


def test_no_module_but_keys_builds_a_redis_key() -> None:
    offenders = []
    for path in [*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        if path.name == "keys.py" and path.parent.name == "segstream":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and _builds_a_key(node):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("user", "queue", "global_")
                    and "keys" in ast.unparse(node.func.value).lower()):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} (generic key)")
    assert not offenders, offenders


def test_stream_entry_round_trips_through_stream_fields() -> None:
    entry = EmbeddedEntry("user:1", "model@abc", "0123abcd", 1_700_000_000_123,
                          1_700_000_000_456)
    flat = entry.xadd_args()
    assert flat[0::2] == list(FIELDS) and flat[1] == "user:1"
    as_read = {k.encode(): v.encode() for k, v in entry.to_fields().items()}  # XRANGE bytes
    back = EmbeddedEntry.parse(b"1-0", as_read)
    assert back == EmbeddedEntry(*[getattr(entry, f) for f in FIELDS], id="1-0")
    legacy = EmbeddedEntry.parse("2-0", {b"user_id": b"u", b"encoded_ms": b"5"})
    assert legacy is not None and legacy.dirty_ms == legacy.encoded_ms == 5
    assert EmbeddedEntry.parse("3-0", {}) is None  # trimmed while pending
    assert EmbeddedEntry.parse("4-0", {"user_id": "u", "dirty_ms": "soon"}) is None


def _assignment(**change: object) -> Assignment:
    base = dict(key="u1", segment_id="s2", previous_segment_id="s1", changed=True,
                reason="moved", confidence=0.7, memberships=[("s2", 0.7), ("s1", 0.3)],
                tier_path=["f1", "s2"], distance=0.2, previous_distance=0.4, margin=0.2)
    return Assignment(**{**base, **change})  # type: ignore[arg-type]


def test_change_record_is_validated_and_a_broken_one_is_refused() -> None:
    args = ("label", "active", {"added": ["a."], "removed": []}, "model@1", 3, 1_000, 2_000)
    record = change_record(_assignment(), *args)
    assert record["explanation"]["reason"] == "moved" and record["event_time"].endswith("Z")
    assert validate("segment_change", record) is record
    with pytest.raises(RecordContractError, match=r"'u1'.*explanation/reason"):
        change_record(_assignment(reason="stayed"), *args)  # not a change
    with pytest.raises(RecordContractError, match="segment_id"):
        change_record(_assignment(segment_id="family-1"), *args)
    bad = build_change_record(_assignment(), *args)  # unchecked: what the bench compares
    bad["extra"] = 1
    with pytest.raises(RecordContractError, match="Additional properties"):
        validate("segment_change", bad)


def test_catalog_entries_and_event_publications_are_validated() -> None:
    rng = np.random.default_rng(0)
    m = OnlineSegmenter(SegConfig(k=3, seed=0))
    m.model_version = "model@1"
    m.fit([Observation(f"u{i}", rng.normal(size=6), "likes tents") for i in range(30)], 10)
    entries = catalog_entries(m, 1_000)
    assert {e["tier"] for e in entries.values()} == {1, 2}
    event = m.drain_events()[0]
    assert with_event(entries[event["segment_id"]], event)["event"]["event"] == "birth"
    with pytest.raises(RecordContractError, match="event"):
        with_event(entries["s1"], {**event, "event": "exploded"})


def test_rfm_contract_round_trips_and_matches_the_summary(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from segstream.config import Settings
    from segstream.events import event_from_dict

    monkeypatch.delenv("SEGSTREAM_INGEST__TIMEZONE", raising=False)
    cfg = Settings().ingest
    state = UserState()
    assert Rfm.of(state, summarize(state, cfg), cfg) is None
    for i, (kind, price) in enumerate([("view", None), ("purchase", 12.5), ("view", None)]):
        raw = {"event_id": f"e{i}", "user_id": "u", "type": kind, "item_id": "i",
               "ts": 1_700_000_000_000 + i * 86_400_000}
        if price is not None:
            raw["price"] = price
        state.apply(increments(event_from_dict(raw, frozenset({"view", "purchase"})), cfg),
                    cfg)
    rfm = Rfm.of(state, summarize(state, cfg), cfg)
    assert rfm is not None
    assert (rfm.last_active_ms, rfm.frequency, rfm.monetary) == \
        (1_700_000_000_000 + 2 * 86_400_000, 3, 12.5)
    assert rfm.first_event_ms <= 1_700_000_000_000
    assert Rfm.from_fields({k.encode(): v.encode() for k, v in rfm.to_fields().items()}) == rfm
    assert Rfm.from_fields({}) is None and Rfm.from_fields({"frequency": "1"}) is None
