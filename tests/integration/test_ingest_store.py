"""The Redis Lua store against the in-memory reference (``features.UserState``)."""

from __future__ import annotations

import random

import pytest
import redis

from segstream.config import Settings
from segstream.events import Event
from segstream.feature_store import FeatureStore, PendingEvent
from segstream.features import UserState, increments, summarize

pytestmark = pytest.mark.integration
BASE_MS = 1_795_857_300_000
DAY = 86_400_000


def store_for(infra: Settings, unique: str, **ingest: object) -> FeatureStore:
    settings = infra.model_copy(update={
        "redis": infra.redis.model_copy(update={"key_prefix": unique}),
        "ingest": infra.ingest.model_copy(update=ingest)})
    return FeatureStore(redis.Redis(host=infra.redis.host, port=infra.redis.port), settings)


def random_events(rng: random.Random, user: str, n: int) -> list[Event]:
    cats = [f"cat{i}/sub" for i in range(8)]
    out = []
    t = BASE_MS - 45 * DAY
    for i in range(n):
        t += rng.choices([50, 400, 20_000, 3_600_000, DAY // 2], weights=[6, 2, 2, 1, 1])[0]
        ts = t - rng.choice([0, 0, 0, 2 * DAY, 40 * DAY])  # some late, some very late
        kind = rng.choice(["view", "click", "purchase", "play"])
        out.append(Event(event_id=f"{user}-{i}", user_id=user, ts_ms=ts, type=kind,
                         item_id="i", category=rng.choice(cats),
                         title=rng.choice([None, *(f"title {k}" for k in range(12))]),
                         price=rng.uniform(1, 500) if kind == "purchase" else None,
                         quantity=rng.choice([None, 1, 3])))
    return out


def test_lua_matches_the_in_memory_reference(infra: Settings, unique: str) -> None:
    store = store_for(infra, unique, max_categories_per_day=3, max_titles=4,
                      bot_max_events_per_minute=5)
    cfg = store.cfg
    rng = random.Random(11)
    for u in range(6):
        user = f"user-{u}"
        events = random_events(rng, user, 400)
        reference = UserState()
        expected = [reference.apply(increments(e, cfg), cfg) for e in events]
        pending = [PendingEvent(e.event_id, increments(e, cfg), "topic", 0, off)
                   for off, e in enumerate(events)]
        statuses = ""
        for start in range(0, len(pending), 37):  # many calls per user, like many batches
            statuses += store.apply({user: pending[start:start + 37]})[user].statuses
        letter = {"applied": "A", "bot_rate": "B", "outside_window": "O"}
        assert statuses == "".join(letter[x] for x in expected)
        assert {"A", "B", "O"} <= set(statuses)
        state, _ = store.read_user(user)
        assert state.buckets == reference.buckets
        assert state.titles == reference.titles
        assert (state.last_ts, state.newest_day) == (reference.last_ts, reference.newest_day)
        assert summarize(state, cfg) == summarize(reference, cfg)


def test_redelivered_offsets_and_seen_event_ids_are_skipped(infra: Settings,
                                                            unique: str) -> None:
    store = store_for(infra, unique, dedup_max_per_user=50)
    cfg = store.cfg
    events = [Event(event_id=f"e{i}", user_id="u", ts_ms=BASE_MS + i * 61_000, type="view",
                    item_id="i", category="books") for i in range(120)]
    pending = [PendingEvent(e.event_id, increments(e, cfg), "events", 2, 1000 + i)
               for i, e in enumerate(events)]
    first = store.apply({"u": pending[:80]})["u"].statuses
    state_before, _ = store.read_user("u")
    replay = store.apply({"u": pending[:80]})["u"].statuses  # a crash redelivers the batch
    assert replay == "R" * 80
    assert store.read_user("u")[0].buckets == state_before.buckets
    # the same event ids again from another partition (a producer retry): dedup set
    again = [PendingEvent(p.event_id, p.inc, "events", 5, p.offset) for p in pending[70:80]]
    assert store.apply({"u": again})["u"].statuses == "D" * 10
    rest = store.apply({"u": pending[80:]})["u"].statuses
    assert first == "A" * 80 and rest == "A" * 40
    assert summarize(store.read_user("u")[0], cfg).window(7).events == 120  # each once
    dedup_key = store.keys.dedup("u")
    assert store.client.zcard(dedup_key) <= 50  # bounded per user
    assert store.client.ttl(dedup_key) > 0 and store.client.ttl(store.keys.features("u")) > 0


def test_a_typical_user_stays_compact(infra: Settings, unique: str) -> None:
    store = store_for(infra, unique)
    cfg = store.cfg
    rng = random.Random(5)
    events = sorted(random_events(rng, "u", 60), key=lambda e: e.ts_ms)
    store.apply({"u": [PendingEvent(e.event_id, increments(e, cfg), "t", 0, i)
                       for i, e in enumerate(events)]})
    store.store_texts([("u", "Last 30 days: 51-100 events ...", True)])
    assert store.client.object("encoding", store.keys.features("u")) == b"listpack"
    assert store.client.object("encoding", store.keys.dedup("u")) == b"listpack"
    assert store.memory_usage("u") < 4096


def test_interest_state_is_anchored_rescaled_and_capped(infra: Settings, unique: str) -> None:
    """Anchored weights: w·2^((t − anchor)/half_life); past 60 half-lives the state is
    re-anchored (every weight rescaled, ratios kept); past max_items the smallest go."""
    settings = infra.model_copy(update={
        "redis": infra.redis.model_copy(update={"key_prefix": unique}),
        "interest": infra.interest.model_copy(update={"half_life_days": 1 / 86_400,
                                                      "max_items": 3})})
    store = FeatureStore(redis.Redis(host=infra.redis.host, port=infra.redis.port), settings)
    hl = 1_000  # ms

    def event(n: int, item: str, ts: int, weight: float) -> PendingEvent:
        ev = Event(event_id=f"e{n}", user_id="u", ts_ms=ts, type="view", item_id=item)
        return PendingEvent(ev.event_id, increments(ev, settings.ingest), "t", 0, n, item,
                            weight)

    store.apply({"u": [event(0, "a", BASE_MS, 1.0), event(1, "b", BASE_MS + 2 * hl, 0.5)]})
    got = store.read_interest("u")
    assert got["a"] == pytest.approx(1.0) and got["b"] == pytest.approx(0.5 * 4)
    # 70 half-lives later: re-anchored at that event, the ratios of the old ones kept
    store.apply({"u": [event(2, "c", BASE_MS + 70 * hl, 1.0)]})
    got = store.read_interest("u")
    assert got["c"] == pytest.approx(1.0)
    assert got["a"] == pytest.approx(2.0 ** -70, rel=1e-9)
    assert got["b"] / got["a"] == pytest.approx(2.0, rel=1e-9)
    # a fourth item: the one with the smallest anchored weight (a) is dropped
    store.apply({"u": [event(3, "d", BASE_MS + 70 * hl, 0.1)]})
    assert set(store.read_interest("u")) == {"b", "c", "d"}
    # a redelivered record (offset at or below the watermark) changes nothing
    before = store.read_interest("u")
    store.apply({"u": [event(3, "d", BASE_MS + 70 * hl, 0.1)]})
    assert store.read_interest("u") == before


def test_a_rendering_of_an_older_state_never_overwrites_a_newer_one(infra: Settings,
                                                                   unique: str) -> None:
    """Consumer A applies a batch, loses the partition, and finishes late: B applied the
    next batch and wrote its text and RFM meanwhile. A's older text and RFM are dropped."""
    from segstream.features import Rfm

    store = store_for(infra, unique)
    cfg = store.cfg
    events = [Event(event_id=f"e{i}", user_id="u", ts_ms=BASE_MS + i * 60_000, type="view",
                    item_id="i", category="books") for i in range(4)]
    pending = [PendingEvent(e.event_id, increments(e, cfg), "events", 0, i)
               for i, e in enumerate(events)]

    def rfm(result: object) -> Rfm:
        state = result.state  # type: ignore[attr-defined]
        found = Rfm.of(state, summarize(state, cfg), cfg)
        assert found is not None
        return found

    a = store.apply({"u": pending[:2]})["u"]  # A's batch
    b = store.apply({"u": pending[:4]})["u"]  # B, after the rebalance: 2 redelivered, 2 new
    assert (a.version, b.version) == ("1", "2") and b.statuses == "RRAA"
    store.store_texts([("u", "B's text", True)], {"u": rfm(b)}, {"u": b.version})
    store.store_texts([("u", "A's text", True)], {"u": rfm(a)}, {"u": a.version})  # late
    assert store.client.get(store.keys.text("u")) == b"B's text"
    assert store.read_rfm("u") == rfm(b) and rfm(b).last_active_ms == events[3].ts_ms
    redelivered = store.apply({"u": pending[2:4]})["u"]  # nothing applied: same version
    assert redelivered.version == "2" and redelivered.statuses == "RR"
    store.store_texts([("u", "B's text again", True)], {"u": rfm(redelivered)},
                      {"u": redelivered.version})
    assert store.client.get(store.keys.text("u")) == b"B's text again"
    store.store_texts([("u", "no version", True)])  # callers without versions: written
    assert store.client.get(store.keys.text("u")) == b"no version"
