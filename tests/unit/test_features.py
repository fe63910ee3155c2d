"""Per-user features: increments of one event, in-memory state, window summaries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from segstream.config import IngestSettings
from segstream.errors import ConfigError
from segstream.events import Event
from segstream.features import (
    OTHER,
    UserState,
    clean_text,
    increments,
    summarize,
    top_category,
    zone,
)

CFG = IngestSettings()
DAY = 86_400_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def event(n: int = 0, ts: str = "2026-11-28T20:30:00+00:00", **kw: object) -> Event:
    fields: dict = {"event_id": f"e{n}", "user_id": "u", "ts_ms": ms(ts), "type": "view",
                    "item_id": "i", **kw}
    return Event(**fields)


def test_increments_of_a_purchase() -> None:
    inc = increments(event(ts="2026-11-28T20:30:00+00:00", type="purchase",
                           category="Electronics/Audio", title="  Wireless\tearbuds ",
                           price=19.99, quantity=3), CFG)
    day = datetime(2026, 11, 28, tzinfo=UTC).toordinal()
    assert inc.day == day
    assert inc.title == "Wireless earbuds"
    assert set(inc.adds) == {
        (f"c:{day}", "purchase", 1), (f"k:{day}", "electronics", 1),
        (f"t:{day}", "evening", 1), (f"t:{day}", "we", 1),  # a Saturday evening
        (f"m:{day}", "qty", 3), (f"m:{day}", "spend", 5997)}


def test_time_buckets_follow_the_configured_zone() -> None:
    tokyo = CFG.model_copy(update={"timezone": "Asia/Tokyo"})
    inc = increments(event(ts="2026-11-28T20:30:00+00:00"), tokyo)  # Sunday 05:30 in Tokyo
    day = datetime(2026, 11, 29).toordinal()
    assert (f"t:{day}", "night", 1) in inc.adds
    assert (f"t:{day}", "we", 1) in inc.adds
    with pytest.raises(ConfigError):
        zone("Mars/Olympus_Mons")


@pytest.mark.parametrize(("raw", "top"), [
    ("Electronics/Audio", "electronics"), ("Books > Fiction", "books"),
    ("Drama|Comedy", "drama"), ("  Home   Garden ", "home garden"), ("a=b;c", "a b c"),
    ("   ", None), (None, None), ("x" * 90, "x" * 40)])
def test_top_category(raw: str | None, top: str | None) -> None:
    assert top_category(raw) == top


def test_clean_text_removes_control_characters_and_surrogates() -> None:
    assert clean_text("a\x00b\n\u200bc\ud800d", 100) == "a b c?d"
    assert clean_text("long title here", 9) == "long titl"


def test_category_cap_per_day_folds_the_rest_into_other() -> None:
    cfg = CFG.model_copy(update={"max_categories_per_day": 3})
    state = UserState()
    for n, cat in enumerate(["a", "b", "c", "d", "e", "a"]):
        state.apply(increments(event(n, category=cat), cfg), cfg)
    (bucket,) = [b for name, b in state.buckets.items() if name.startswith("k:")]
    assert bucket == {"a": 2, "b": 1, "c": 1, OTHER: 2}


def test_titles_keep_the_newest_distinct_ones() -> None:
    cfg = CFG.model_copy(update={"max_titles": 2})
    state = UserState()
    for n, title in enumerate(["t1", "t2", "t1", "t3"]):
        state.apply(increments(event(n, ts=f"2026-11-28T10:0{n}:00+00:00", title=title), cfg),
                    cfg)
    assert state.titles == {"t1": ms("2026-11-28T10:02:00+00:00"),
                            "t3": ms("2026-11-28T10:03:00+00:00")}
    assert summarize(state, cfg).recent_titles == ("t3", "t1")


def test_old_day_buckets_are_pruned_and_late_events_refused() -> None:
    state = UserState()
    assert state.apply(increments(event(1, ts="2026-10-01T12:00:00+00:00"), CFG), CFG) == \
        "applied"
    assert state.apply(increments(event(2, ts="2026-11-28T12:00:00+00:00"), CFG), CFG) == \
        "applied"
    days = {int(name.split(":")[1]) for name in state.buckets}
    assert days == {datetime(2026, 11, 28).toordinal()}
    late = increments(event(3, ts="2026-10-02T12:00:00+00:00"), CFG)
    assert state.apply(late, CFG) == "outside_window"
    inside = increments(event(4, ts="2026-10-30T12:00:00+00:00"), CFG)
    assert state.apply(inside, CFG) == "applied"  # 30th day back: still in the window


def test_bot_rule_counts_events_per_minute() -> None:
    cfg = CFG.model_copy(update={"bot_max_events_per_minute": 3})
    state = UserState()
    outcomes = [state.apply(increments(event(n, ts=f"2026-11-28T10:00:{n:02d}+00:00"), cfg),
                            cfg) for n in range(5)]
    assert outcomes == ["applied"] * 3 + ["bot_rate"] * 2
    assert state.apply(increments(event(9, ts="2026-11-28T10:01:00+00:00"), cfg), cfg) == \
        "applied"


def test_summary_windows_and_recency() -> None:
    state = UserState()
    history = [("2026-11-28T09:00:00+00:00", "view", "books"),
               ("2026-11-27T21:00:00+00:00", "purchase", "books"),
               ("2026-11-20T21:00:00+00:00", "view", "games"),     # 8 days back: 30d only
               ("2026-11-01T03:00:00+00:00", "click", "games")]
    for n, (ts, kind, cat) in enumerate(reversed(history)):
        state.apply(increments(event(n, ts=ts, type=kind, category=cat, price=10.0), CFG), CFG)
    f = summarize(state, CFG)
    week, month = f.window(7), f.window(30)
    assert (week.events, month.events) == (2, 4)
    assert dict(week.types) == {"view": 1, "purchase": 1}
    assert month.categories == (("books", 2), ("games", 2))
    assert (month.purchases, month.spend, month.quantity) == (1, 10.0, 1)
    assert dict(month.time_of_day) == {"night": 1, "morning": 1, "afternoon": 0, "evening": 2}
    assert (month.weekday, month.weekend, month.active_days) == (2, 2, 4)
    assert f.days_since_last_purchase == 1
    later = summarize(state, CFG, reference_ms=ms("2026-12-05T00:00:00+00:00"))
    assert later.window(7).events == 0 and later.window(30).events == 3


def test_empty_state_summarizes_to_nothing() -> None:
    f = summarize(UserState(), CFG)
    assert f.reference_ms is None and all(w.events == 0 for w in f.windows)


def test_huge_spend_is_capped_not_overflowing() -> None:
    inc = increments(event(type="purchase", price=1e300, quantity=10**6), CFG)
    assert (f"m:{inc.day}", "spend", 2**40) in inc.adds
