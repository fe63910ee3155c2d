"""The seeded persona generator: reproducible, valid, recoverable personas, real noise."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from segstream.config import DEFAULT_EVENT_TYPES, Settings
from segstream.errors import InvalidEvent
from segstream.events import parse_event
from segstream.synthetic import BOT, MALFORMED, PERSONAS, SyntheticStream, load_truth
from segstream_services.ingest.service import IngestService

TYPES = frozenset(DEFAULT_EVENT_TYPES)
END = 1_795_857_300_000


def small(**kw: object) -> SyntheticStream:
    return SyntheticStream(**{"users": 60, "days": 10, "seed": 3, "end_ms": END, **kw})


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    assert list(small().records()) == list(small().records())
    assert list(small().records()) != list(small(seed=4).records())


def test_valid_events_parse_and_are_in_time_order_within_the_range() -> None:
    stream = small()
    events = [parse_event(v, TYPES) for _, v in stream.records()]
    assert len(events) == stream.counts["valid"] > 500
    times = [e.ts_ms for e in events]
    assert times == sorted(times)
    assert times[0] >= END - 10 * 86_400_000 and times[-1] <= END
    assert {e.type for e in events} >= {"view", "click", "cart", "purchase", "play"}
    purchases = [e for e in events if e.type == "purchase"]
    assert purchases and all(e.price and e.price > 0 and e.quantity for e in purchases)


def test_personas_are_recoverable_and_distinct(tmp_path: Path) -> None:
    stream = small(users=200, bots=0.05)
    truth = stream.truth()
    assert set(truth) == {stream.user_id(i) for i in range(200)}
    assert len(set(truth.values()) - {BOT}) >= 6 and BOT in truth.values()
    path = stream.write_truth(tmp_path / "run.truth.json")
    assert load_truth(path) == truth
    assert json.loads(path.read_text())["args"]["seed"] == 3
    # each persona's favourite category is its own, or shared by at most two personas
    favourites = Counter(max(p.categories, key=p.categories.__getitem__) for p in PERSONAS)
    assert len(PERSONAS) >= 6 and max(favourites.values()) <= 2


def test_users_behave_like_their_persona() -> None:
    stream = small(users=120, days=20)
    truth = stream.truth()
    by_persona: dict[str, Counter[str]] = {}
    for _, value in stream.records():
        event = parse_event(value, TYPES)
        top = (event.category or "").split("/")[0]
        by_persona.setdefault(truth[event.user_id], Counter())[top] += 1
    for persona in PERSONAS:
        if persona.name in by_persona:
            favourite = max(persona.categories, key=persona.categories.__getitem__)
            assert by_persona[persona.name].most_common(1)[0][0] == favourite


def test_duplicates_bots_and_every_malformed_kind_appear() -> None:
    stream = small(users=100, malformed=0.2, duplicates=0.05, bots=0.05)
    seen_ids: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    service = IngestService(Settings())  # validation only: no connection is made
    for _, value in stream.records():
        try:
            seen_ids[service.check(value, END).event_id] += 1  # type: ignore[union-attr]
        except InvalidEvent as exc:
            reasons[exc.reason] += 1
    assert stream.counts["malformed"] >= len(MALFORMED)
    assert sum(reasons.values()) == stream.counts["malformed"]
    assert set(reasons) == {reason for _, reason in MALFORMED.values()}
    assert sum(n - 1 for n in seen_ids.values()) == stream.counts["duplicates"] > 0
    bots = [u for u, p in stream.truth().items() if p == BOT]
    assert bots


def test_each_malformed_kind_fails_for_its_reason() -> None:
    service = IngestService(Settings())
    base = {"event_id": "e1", "user_id": "user-000001", "ts": END, "type": "view",
            "item_id": "i1", "price": 3.5}
    assert len(MALFORMED) >= 30
    for name, (make, reason) in MALFORMED.items():
        try:
            service.check(make(base), END)
        except InvalidEvent as exc:
            assert exc.reason == reason, name
        else:
            raise AssertionError(f"{name} was accepted")
