"""Feature text: readable, bucketed, capped, deterministic, English or Chinese."""

from __future__ import annotations

import random
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segstream.config import DEFAULT_EVENT_TYPES, IngestSettings
from segstream.events import Event
from segstream.feature_text import count_bucket, interest_summary, money_bucket, render, share
from segstream.features import (
    TIME_OF_DAY,
    Features,
    UserState,
    WindowFeatures,
    increments,
    summarize,
)

CFG = IngestSettings()
ZH = CFG.model_copy(update={"text_language": "zh"})
BASE_MS = int(datetime.fromisoformat("2026-11-28T12:00:00+00:00").timestamp() * 1000)


def history(user: str, seed: int, n: int = 60) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choice(["view", "view", "click", "purchase", "cart"])
        out.append(Event(event_id=f"{user}-{i}", user_id=user,
                         ts_ms=BASE_MS - rng.randrange(0, 29 * 86_400_000), type=kind,
                         item_id=f"i{i}", category=rng.choice(["Electronics/Audio", "books"]),
                         title=rng.choice(["Wireless earbuds", "The Hobbit", "USB-C cable"]),
                         price=rng.choice([9.99, 59.0, 250.0]) if kind == "purchase" else None))
    return sorted(out, key=lambda e: e.ts_ms)


def text_of(events: list[Event], cfg: IngestSettings = CFG) -> str:
    state = UserState()
    for e in events:
        state.apply(increments(e, cfg), cfg)
    return render(summarize(state, cfg), cfg)


@pytest.mark.parametrize(("n", "text"), [(0, "0"), (1, "1"), (2, "2"), (3, "3-5"), (7, "6-10"),
                                         (41, "21-50"), (1000, "501-1,000"), (10**9, "1,000+")])
def test_count_buckets(n: int, text: str) -> None:
    assert count_bucket(n) == text


@pytest.mark.parametrize(("amount", "text"), [(0, "<10"), (9.99, "<10"), (10, "10-50"),
                                              (1500, "1,000-2,000"), (10**7, "50,000+")])
def test_money_buckets(amount: float, text: str) -> None:
    assert money_bucket(amount) == text


def test_share_rounds_to_tens() -> None:
    assert (share(6, 10), share(1, 30), share(0, 5), share(3, 0)) == (60, 0, 0, 0)


def test_english_text_reads_well_and_hides_the_user() -> None:
    text = text_of(history("user-42", 1))
    assert text.startswith("Mostly electronics (")  # interest first: categories, titles,
    assert "books (" in text and "Last 30 days: 51-100 events on " in text  # then activity
    assert text.index("Recently: ") < text.index("Last 30 days") < text.index("Spent ")
    assert "user-42" not in text
    assert len(text) <= CFG.text_max_chars


def test_identical_behaviour_gives_identical_text() -> None:
    a = history("user-a", 5)
    b = [Event(**{**e.to_dict(), "user_id": "user-b", "event_id": "x" + e.event_id})
         for e in a]
    assert text_of(a) == text_of(b)
    assert text_of(a) != text_of(history("user-c", 6))


def test_chinese_template_renders() -> None:
    text = text_of(history("u", 2), ZH)
    assert text.startswith("主要兴趣：")
    assert text.index("最近：") < text.index("近30天：共51-100次行为") < text.index("消费金额")
    assert "购买" in text and "元" in text and "活跃时段：" in text
    assert len(text) <= ZH.text_max_chars


def test_length_cap_drops_activity_sections_before_interests() -> None:
    events = history("u", 3)
    full = text_of(events)
    short_cfg = CFG.model_copy(update={"text_max_chars": len(full) - 5})
    short = text_of(events, short_cfg)
    assert len(short) <= len(full) - 5
    assert full.startswith(short)  # whole sections dropped from the end
    assert full.split(" Last 30 days:")[0] in short  # categories and titles kept


def test_titles_are_dropped_from_the_end_when_interests_alone_overflow() -> None:
    events = history("u", 3)
    interests = text_of(events).split(" Last 30 days:")[0]
    tight = CFG.model_copy(update={"text_max_chars": len(interests) - 3})
    text = text_of(events, tight)
    assert text.startswith("Mostly ") and "Recently: " in text
    assert len(text) <= len(interests) - 3
    assert text.count(",") < interests.count(",")  # fewer titles, none cut mid-word


def test_interest_summary_names_only_interests() -> None:
    state = UserState()
    for e in history("u", 4):
        state.apply(increments(e, CFG), CFG)
    summary = interest_summary(summarize(state, CFG), CFG)
    assert summary.startswith("Mostly ") and "Recently: " in summary
    assert "events" not in summary and "Spent" not in summary


def test_user_without_events() -> None:
    empty = summarize(UserState(), CFG)
    assert render(empty, CFG) == "No activity yet."
    assert render(empty, ZH) == "暂无行为。"


odd_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=300)
big = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def windows(draw: st.DrawFn, days: int) -> WindowFeatures:
    pairs = st.lists(st.tuples(odd_text, big), max_size=12)
    return WindowFeatures(
        days=days, events=draw(big), types=tuple(draw(pairs)), categories=tuple(draw(pairs)),
        purchases=draw(big), spend=draw(big), quantity=draw(big),
        time_of_day=tuple((t, draw(big)) for t in TIME_OF_DAY), weekday=draw(big),
        weekend=draw(big), active_days=draw(big))


@st.composite
def features(draw: st.DrawFn) -> Features:
    return Features(reference_ms=draw(st.none() | st.integers(0, 2**62)),
                    last_event_ms=draw(st.none() | st.integers(0, 2**62)),
                    windows=(draw(windows(7)), draw(windows(30))),
                    days_since_last_purchase=draw(st.none() | st.integers(-10**9, 10**9)),
                    recent_titles=tuple(draw(st.lists(odd_text, max_size=20))))


@settings(max_examples=300, deadline=None)
@given(f=features(), language=st.sampled_from(["en", "zh"]), cap=st.integers(80, 800))
def test_render_never_raises_is_bounded_and_deterministic(f: Features, language: str,
                                                          cap: int) -> None:
    cfg = CFG.model_copy(update={"text_language": language, "text_max_chars": cap})
    text = render(f, cfg)
    assert isinstance(text, str) and 0 < len(text) <= cap
    assert render(f, cfg) == text
    text.encode("utf-8")  # storable in Redis: no lone surrogates survive


event_st = st.builds(
    lambda n, ts, kind, cat, title, price, qty: Event(
        event_id=f"e{n}", user_id="u", ts_ms=BASE_MS - ts, type=kind, item_id="i",
        category=cat, title=title, price=price, quantity=qty),
    st.integers(0, 10**6), st.integers(0, 40 * 86_400_000), st.sampled_from(DEFAULT_EVENT_TYPES),
    st.none() | odd_text, st.none() | odd_text,
    st.none() | st.floats(0, 1e6, allow_nan=False), st.none() | st.integers(1, 10_000))


@settings(max_examples=150, deadline=None)
@given(events=st.lists(event_st, max_size=40), language=st.sampled_from(["en", "zh"]))
def test_same_events_same_text_from_fresh_state(events: list[Event], language: str) -> None:
    cfg = CFG.model_copy(update={"text_language": language})
    assert text_of(events, cfg) == text_of(list(events), cfg)
    assert len(text_of(events, cfg)) <= cfg.text_max_chars
