"""Feature text: a short, readable, deterministic description of a user's ``Features``.

Every number is bucketed (``21-50 views``, ``worth 100-200``, shares rounded to 10%), lists
are ordered by count then name, and nothing depends on the wall clock, so identical
behaviour gives an identical text (what lets the encoder cache by text hash). Sections come
interest first (top categories, then recent item titles, then the activity summary) and
are added in that order while they fit ``text_max_chars``. The text carries no user id and
no free text other than capped, cleaned item titles and category names. English by
default; ``ingest.text_language = "zh"`` selects the Chinese template.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import lru_cache

from segstream.config import IngestSettings
from segstream.features import OTHER, Features, WindowFeatures, clean_text

COUNT_EDGES = (1, 2, 3, 6, 11, 21, 51, 101, 201, 501, 1001)
MONEY_EDGES = (0, 10, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000)
TITLE_CHARS = 40
CATEGORY_CHARS = 30

EN_TYPES = {"view": ("view", "views"), "click": ("click", "clicks"),
            "cart": ("add-to-cart", "add-to-carts"), "purchase": ("purchase", "purchases"),
            "like": ("like", "likes"), "share": ("share", "shares"),
            "comment": ("comment", "comments"), "play": ("play", "plays"),
            "rate": ("rating", "ratings")}
ZH_TYPES = {"view": "浏览", "click": "点击", "cart": "加购", "purchase": "购买", "like": "点赞",
            "share": "分享", "comment": "评论", "play": "播放", "rate": "评分"}
EN_TIMES = {"night": "at night", "morning": "in the morning", "afternoon": "in the afternoon",
            "evening": "in the evening"}
ZH_TIMES = {"night": "深夜", "morning": "上午", "afternoon": "下午", "evening": "晚间"}


def _finite_int(value: float) -> int:
    if type(value) is int and 0 <= value <= 10**18:  # the common case, checked first
        return value
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0
    return int(min(value, 1e18))


def count_bucket(n: float, thousands: str = ",") -> str:
    """``1``, ``2``, ``3-5``, ``6-10``, ... ``501-1,000``, ``over 1,000``-style ranges."""
    return _count_label(min(_finite_int(n), COUNT_EDGES[-1]), thousands)


@lru_cache(maxsize=4096)
def _count_label(n: int, thousands: str) -> str:
    if n < 3:
        return str(n)
    for low, high in itertools.pairwise(COUNT_EDGES):
        if low <= n < high:
            return f"{low:,}-{high - 1:,}".replace(",", thousands)
    return f"{COUNT_EDGES[-1] - 1:,}+".replace(",", thousands)


def money_bucket(amount: float, thousands: str = ",") -> str:
    """Spend as a range: ``under 10`` -> ``<10``, ``100-200``, ``50,000+``."""
    value = _finite_int(amount)
    if value < MONEY_EDGES[1]:
        return f"<{MONEY_EDGES[1]}"
    for low, high in itertools.pairwise(MONEY_EDGES):
        if low <= value < high:
            return f"{low:,}-{high:,}".replace(",", thousands)
    return f"{MONEY_EDGES[-1]:,}+".replace(",", thousands)


def share(part: float, total: float) -> int:
    """``part / total`` in percent, rounded to the nearest 10."""
    part, total = _finite_int(part), _finite_int(total)
    if total <= 0 or part <= 0:
        return 0
    return min(100, round(part * 10 / total) * 10)


def recency_days(days: int | None) -> str | None:
    """Bucket for the days between the last purchase and the reference day."""
    if days is None or days < 0:
        return None
    for limit, label in ((0, "0"), (2, "1-2"), (7, "3-7"), (14, "8-14")):
        if days <= limit:
            return label
    return "15+"


def _top_times(w: WindowFeatures) -> list[str]:
    total = sum(_finite_int(n) for _, n in w.time_of_day)
    return [t for t, n in w.time_of_day if share(n, total) >= 40]


def _week_pattern(w: WindowFeatures) -> str:
    weekend = share(w.weekend, _finite_int(w.weekend) + _finite_int(w.weekday))
    if weekend >= 50:
        return "weekend"
    if weekend <= 10:
        return "weekday"
    return "all"


def _categories(w: WindowFeatures) -> list[tuple[str, int]]:
    total = sum(_finite_int(n) for _, n in w.categories)
    out = []
    for name, n in w.categories[:3]:
        pct = share(n, total)
        label = clean_text(str(name), CATEGORY_CHARS)
        if pct >= 10 and label and name != OTHER:
            out.append((label, pct))
    return out


def _titles(features: Features, limit: int) -> list[str]:
    titles = (clean_text(str(t), TITLE_CHARS) for t in features.recent_titles[:limit])
    return [t for t in titles if t]


def _en(features: Features, long: WindowFeatures, short: WindowFeatures | None,
        titles: list[str], cats: list[tuple[str, int]]) -> list[str]:
    def counted(n: int, kind: str) -> str:
        one, many = EN_TYPES.get(kind, (f"{kind} event", f"{kind} events"))
        bucket = count_bucket(n)
        return f"{bucket} {one if bucket == '1' else many}"

    parts = []
    if cats:
        named = [f"{c} ({p}%)" for c, p in cats]
        joined = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
        parts.append(f"Mostly {joined}.")
    parts.append(("Recently: " + ", ".join(titles) + ".") if titles else "")
    types = ", ".join(counted(n, clean_text(str(t), 20)) for t, n in long.types[:4])
    days = count_bucket(long.active_days)
    parts.append(f"Last {long.days} days: {count_bucket(long.events)} events on {days} "
                 f"day{'' if days == '1' else 's'} ({types}).")
    if long.purchases:
        text = f"Spent {money_bucket(long.spend)} on {counted(long.purchases, 'purchase')}"
        gap = recency_days(features.days_since_last_purchase)
        if gap == "0":
            text += ", the last on the latest active day"
        elif gap:
            text += f", the last {gap} days before the latest activity"
        parts.append(text + ".")
    else:
        parts.append("No purchases.")
    times = _top_times(long)
    when = " and ".join(EN_TIMES[t] for t in times) if times else "at all times of day"
    week = {"weekend": "mostly on weekends", "weekday": "on weekdays",
            "all": "through the week"}[_week_pattern(long)]
    parts.append(f"Active {when}, {week}.")
    if short is not None and short.events:
        top = short.types[0][0] if short.types else "event"
        _one, many = EN_TYPES.get(top, (f"{top} event", f"{top} events"))
        parts.append(f"Last {short.days} days: {count_bucket(short.events)} events, "
                     f"mostly {clean_text(many, 30)}.")
    return parts


def _zh(features: Features, long: WindowFeatures, short: WindowFeatures | None,
        titles: list[str], cats: list[tuple[str, int]]) -> list[str]:
    def kind(t: str) -> str:
        return ZH_TYPES.get(t, clean_text(str(t), 20))

    parts = []
    if cats:
        parts.append("主要兴趣：" + "、".join(f"{c}（{p}%）" for c, p in cats) + "。")
    parts.append(("最近：" + "、".join(titles) + "。") if titles else "")
    types = "，".join(f"{kind(t)}{count_bucket(n, '')}次" for t, n in long.types[:4])
    parts.append(f"近{long.days}天：共{count_bucket(long.events, '')}次行为，"
                 f"活跃{count_bucket(long.active_days, '')}天（{types}）。")
    if long.purchases:
        text = (f"消费金额{money_bucket(long.spend, '')}元，"
                f"购买{count_bucket(long.purchases, '')}次")
        gap = recency_days(features.days_since_last_purchase)
        if gap == "0":
            text += "，最近一次购买在最后活跃日"
        elif gap:
            text += f"，最近一次购买在最后活跃前{gap}天"
        parts.append(text + "。")
    else:
        parts.append("无购买。")
    times = _top_times(long)
    when = "、".join(ZH_TIMES[t] for t in times) if times else "全天"
    week = {"weekend": "以周末为主", "weekday": "以工作日为主", "all": "全周均衡"}[
        _week_pattern(long)]
    parts.append(f"活跃时段：{when}，{week}。")
    if short is not None and short.events:
        top = kind(short.types[0][0]) if short.types else "行为"
        parts.append(f"近{short.days}天：{count_bucket(short.events, '')}次行为，以{top}为主。")
    return parts


TEMPLATES: dict[str, tuple[Callable[..., list[str]], str, str]] = {
    # language: (section builder, separator, text for a user with no events)
    "en": (_en, " ", "No activity yet."),
    "zh": (_zh, "", "暂无行为。"),
}


def render(features: Features, settings: IngestSettings) -> str:
    """The feature text of ``features`` under ``settings`` (language, caps).

    Interest first: the top categories, then the recent item titles, then the activity
    summary. Titles are dropped from the end until the interest sections fit; the
    remaining sections are added in order while they fit.
    """
    build, sep, empty = TEMPLATES[settings.text_language]
    windows = sorted(features.windows, key=lambda w: w.days)
    if not windows or not _finite_int(windows[-1].events):
        return empty
    long = windows[-1]
    short = windows[0] if len(windows) > 1 else None
    titles = _titles(features, settings.text_titles)
    limit = settings.text_max_chars
    cats = _categories(long)
    head = 1 if cats else 0   # parts[head] is the titles section
    while True:
        parts = build(features, long, short, titles, cats)
        interest = sep.join(p for p in parts[:head + 1] if p)
        if titles and len(interest) > limit:
            titles = titles[:-1]  # drop titles from the end until the interest part fits
            continue
        text = interest[:limit]
        for part in parts[head + 1:]:
            candidate = part if not text else text + sep + part
            if len(candidate) > limit:
                break
            text = candidate
        return text or parts[head + 1][:limit]


def interest_summary(features: Features, settings: IngestSettings) -> str:
    """Only the interest sections of the feature text (top categories, recent titles):
    what segment labels are drawn from, so that they name interests, not activity."""
    windows = sorted(features.windows, key=lambda w: w.days)
    if not windows:
        return ""
    long = windows[-1]
    build, sep, _ = TEMPLATES[settings.text_language]
    cats = _categories(long)
    parts = build(features, long, None, _titles(features, settings.text_titles), cats)
    head = 1 if cats else 0
    return sep.join(p for p in parts[:head + 1] if p)[:settings.text_max_chars]
