"""Per-user features: the one implementation, pure Python, no Redis.

A user's state is a **bucket map**: ``{"<group>:<day>": {sub: amount}}`` where ``day`` is
the local calendar day (``date.toordinal()`` in ``settings.timezone``) and the groups are

- ``c`` event counts per type (``c:738000 -> {"view": 12, "purchase": 1}``)
- ``k`` events per top-level category (at most ``max_categories_per_day`` names a day,
  the rest under ``~other``)
- ``t`` time patterns: ``night|morning|afternoon|evening`` and ``wd|we`` (weekday/weekend)
- ``m`` money: ``spend`` (purchase price x quantity, in cents) and ``qty`` (units bought)

plus the last ``max_titles`` distinct item titles (title -> newest event ms). Day buckets
older than the longest window before the user's newest event are dropped, so state is
bounded per user. ``increments`` maps an ``Event`` to bucket increments, ``UserState``
applies them in memory exactly like the Redis Lua script in ``feature_store`` does, and
``summarize`` turns a bucket map into ``Features`` relative to a reference time (by
default the user's newest event, so the same history always gives the same features).
``Rfm`` is the part of a summary that other services read (the segmenter's engagement tier).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from redis.typing import EncodableT, FieldT

from segstream.config import IngestSettings
from segstream.errors import ConfigError
from segstream.events import Event

DAY_MS = 86_400_000
MINUTE_MS = 60_000
OTHER = "~other"
MAX_CENTS = 2**40  # one event's spend is capped so sums stay exact integers everywhere
TIME_OF_DAY = ("night", "morning", "afternoon", "evening")  # 0-6, 6-12, 12-18, 18-24
CATEGORY_MAX_CHARS = 40
_CATEGORY_SPLIT = re.compile(r"[/>|]")
_SPACE = re.compile(r"\s+")
_RESERVED = re.compile(r"[=;]")

BucketMap = dict[str, dict[str, int]]
_GROUPS = frozenset(("c", "k", "t", "m"))  # the bucket groups a summary reads


@lru_cache(maxsize=32)
def zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` for ``name``; ``ConfigError`` when it does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {name!r} (ingest.timezone)") from None


def clean_text(value: str, limit: int) -> str:
    """Printable single-line text: no control characters or lone surrogates, capped."""
    if value.isprintable() and "  " not in value and value == value.strip():
        return value[:limit].rstrip()  # the common case, without the per-character walk
    value = value.encode("utf-8", "replace").decode("utf-8")
    value = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in value)
    value = _SPACE.sub(" ", value).strip()
    return value[:limit].rstrip()


def top_category(category: str | None) -> str | None:
    """The top level of a category path (``Electronics/Audio`` -> ``electronics``)."""
    if category is None:
        return None
    return _top_category(category)


@lru_cache(maxsize=8192)  # a catalogue repeats its category paths in every event
def _top_category(category: str) -> str | None:
    top = _CATEGORY_SPLIT.split(category, maxsplit=1)[0]
    top = _RESERVED.sub(" ", clean_text(top, CATEGORY_MAX_CHARS * 2).lower())
    top = _SPACE.sub(" ", top).strip()[:CATEGORY_MAX_CHARS].rstrip()
    return top or None


@dataclass(slots=True)  # not frozen: built once per ingested event, ~4x cheaper so
class Increment:
    """What one event adds to its user's state."""

    ts_ms: int
    day: int
    minute: int
    title: str | None
    adds: tuple[tuple[str, str, int], ...]  # (field "<group>:<day>", sub, amount)


def local_time(ts_ms: int, settings: IngestSettings) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz=zone(settings.timezone))


@lru_cache(maxsize=8192)
def _calendar(quarter_hour: int, zone_name: str) -> tuple[int, int, bool]:
    # Every zone offset is a multiple of 15 minutes, so day, hour and weekday are constant
    # within a UTC quarter hour: one conversion serves all events in it.
    when = datetime.fromtimestamp(quarter_hour * 900, tz=zone(zone_name))
    return when.toordinal(), when.hour, when.weekday() >= 5


def calendar(ts_ms: int, settings: IngestSettings) -> tuple[int, int, bool]:
    """(local day ordinal, local hour, is weekend) of an epoch-ms time."""
    return _calendar(ts_ms // 900_000, settings.timezone)


@lru_cache(maxsize=8192)
def _quarter_adds(quarter_hour: int, zone_name: str
                  ) -> tuple[int, str, str, str, tuple[tuple[str, str, int], ...]]:
    # what every event of a UTC quarter hour shares: its day, the day's field names and
    # the two time-pattern increments
    day, hour, weekend = _calendar(quarter_hour, zone_name)
    times = f"t:{day}"
    return (day, f"c:{day}", f"k:{day}", f"m:{day}",
            ((times, TIME_OF_DAY[hour // 6], 1), (times, "we" if weekend else "wd", 1)))


def increments(event: Event, settings: IngestSettings) -> Increment:
    """The bucket increments of one validated event."""
    day, counts, cats, money, times = _quarter_adds(event.ts_ms // 900_000, settings.timezone)
    adds: list[tuple[str, str, int]] = [(counts, event.type, 1)]
    category = _top_category(event.category) if event.category is not None else None
    if category:
        adds.append((cats, category, 1))
    adds += times
    if event.type == "purchase":
        quantity = event.quantity or 1
        adds.append((money, "qty", quantity))
        if event.price is not None:
            cents = event.price * quantity * 100
            adds.append((money, "spend", round(min(cents, MAX_CENTS))))
    title = clean_text(event.title, settings.title_max_chars) if event.title else ""
    return Increment(ts_ms=event.ts_ms, day=day, minute=event.ts_ms // MINUTE_MS,
                     title=title or None, adds=tuple(adds))


def window_start(newest_day: int, settings: IngestSettings) -> int:
    """The oldest day still kept when the user's newest event is on ``newest_day``."""
    return newest_day - max(settings.windows_days) + 1


@dataclass
class UserState:
    """One user's state in memory, updated exactly as the Redis script updates it.

    ``apply`` returns the outcome: ``applied``, ``bot_rate`` (over the per-minute limit in
    the user's newest event minute) or ``outside_window`` (older than the longest window
    before the user's newest event). Duplicate detection is the caller's job.
    """

    buckets: BucketMap = field(default_factory=dict)
    titles: dict[str, int] = field(default_factory=dict)
    last_ts: int | None = None
    newest_day: int | None = None
    rate_minute: int = -1
    rate_count: int = 0

    def apply(self, inc: Increment, settings: IngestSettings) -> str:
        if inc.minute == self.rate_minute:
            self.rate_count += 1
        elif inc.minute > self.rate_minute:
            self.rate_minute, self.rate_count = inc.minute, 1
        if inc.minute == self.rate_minute and self.rate_count > settings.bot_max_events_per_minute:
            return "bot_rate"
        if self.newest_day is not None and inc.day < window_start(self.newest_day, settings):
            return "outside_window"
        for name, sub, amount in inc.adds:
            bucket = self.buckets.setdefault(name, {})
            if (name.startswith("k:") and sub not in bucket
                    and len(bucket) >= settings.max_categories_per_day):
                sub = OTHER
            bucket[sub] = bucket.get(sub, 0) + amount
        if inc.title and settings.max_titles:
            self.titles[inc.title] = max(inc.ts_ms, self.titles.get(inc.title, inc.ts_ms))
            if len(self.titles) > settings.max_titles:
                keep = sorted(self.titles.items(), key=lambda kv: (kv[1], kv[0].encode()))
                self.titles = dict(keep[-settings.max_titles:])
        self.last_ts = inc.ts_ms if self.last_ts is None else max(self.last_ts, inc.ts_ms)
        if self.newest_day is None or inc.day > self.newest_day:
            self.newest_day = inc.day
            oldest = window_start(inc.day, settings)
            for name in [n for n in self.buckets if int(n.split(":", 1)[1]) < oldest]:
                del self.buckets[name]
        return "applied"


@dataclass(frozen=True)
class WindowFeatures:
    """Aggregates over the last ``days`` days (the reference day included)."""

    days: int
    events: int
    types: tuple[tuple[str, int], ...]        # most frequent first
    categories: tuple[tuple[str, int], ...]   # most frequent first, capped
    purchases: int
    spend: float                               # currency units
    quantity: int
    time_of_day: tuple[tuple[str, int], ...]  # in TIME_OF_DAY order
    weekday: int
    weekend: int
    active_days: int


@dataclass(frozen=True)
class Features:
    """A user's feature summary, relative to ``reference_ms``."""

    reference_ms: int | None
    last_event_ms: int | None
    windows: tuple[WindowFeatures, ...]
    days_since_last_purchase: int | None       # None: no purchase in the longest window
    recent_titles: tuple[str, ...]             # newest first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def window(self, days: int) -> WindowFeatures:
        return next(w for w in self.windows if w.days == days)


def _ranked(counts: Mapping[str, int], cap: int | None = None) -> tuple[tuple[str, int], ...]:
    items = sorted(((k, v) for k, v in counts.items() if v > 0), key=_by_count)
    return tuple(items[:cap] if cap else items)


def _by_count(kv: tuple[str, int]) -> tuple[int, str]:
    return -kv[1], kv[0]


def _empty(settings: IngestSettings) -> Features:
    empty = tuple(WindowFeatures(d, 0, (), (), 0, 0.0, 0, tuple((t, 0) for t in TIME_OF_DAY),
                                 0, 0, 0) for d in sorted(settings.windows_days))
    return Features(None, None, empty, None, ())


def summarize(state: UserState, settings: IngestSettings, reference_ms: int | None = None,
              max_categories: int = 10) -> Features:
    """The ``Features`` of a user's state; windows end on the reference day.

    ``reference_ms`` defaults to the user's newest event, which makes the result a pure
    function of the events (identical behaviour -> identical features). One pass over the
    buckets with plain dicts (ingest summarizes every touched user in every batch).
    """
    ref_ms = reference_ms if reference_ms is not None else state.last_ts
    if ref_ms is None:
        return _empty(settings)
    ref_day = calendar(ref_ms, settings)[0]
    spans = sorted(settings.windows_days)
    # each bucket is added once, to the band of the shortest window holding it (band i:
    # spans[i-1] <= age < spans[i]); window i is then bands 0..i (a bucket of the last
    # 7 days is not summed twice for 7 and 30 days)
    bands: list[dict[str, dict[str, int]]] = [{"c": {}, "k": {}, "t": {}, "m": {}}
                                              for _ in spans]
    band_days: list[set[int]] = [set() for _ in spans]  # days with events (a "c" bucket)
    last_purchase_day: int | None = None
    first = ref_day - spans[-1] + 1
    for name, bucket in state.buckets.items():
        group, _, day_text = name.partition(":")
        day = int(day_text)
        if not first <= day <= ref_day or group not in _GROUPS:
            continue
        if group == "c" and bucket.get("purchase") and (last_purchase_day or 0) < day:
            last_purchase_day = day
        age, band = ref_day - day, 0
        while age >= spans[band]:
            band += 1
        sums = bands[band][group]
        for sub, amount in bucket.items():
            sums[sub] = sums.get(sub, 0) + amount
        if group == "c":
            band_days[band].add(day)
    acc: list[dict[str, dict[str, int]]] = []
    active: list[set[int]] = []
    total: dict[str, dict[str, int]] = {"c": {}, "k": {}, "t": {}, "m": {}}
    seen: set[int] = set()
    for i in range(len(spans)):
        for group, found in bands[i].items():
            sums = total[group]
            for sub, amount in found.items():
                sums[sub] = sums.get(sub, 0) + amount
        seen |= band_days[i]
        last = i == len(spans) - 1  # the last window keeps the running sums themselves
        acc.append(total if last else {g: dict(v) for g, v in total.items()})
        active.append(seen if last else set(seen))
    windows = []
    for i, days in enumerate(spans):
        types, cats, times, money = acc[i]["c"], acc[i]["k"], acc[i]["t"], acc[i]["m"]
        windows.append(WindowFeatures(
            days=days, events=sum(types.values()), types=_ranked(types),
            categories=_ranked(cats, max_categories), purchases=types.get("purchase", 0),
            spend=money.get("spend", 0) / 100, quantity=money.get("qty", 0),
            time_of_day=tuple((t, times.get(t, 0)) for t in TIME_OF_DAY),
            weekday=times.get("wd", 0), weekend=times.get("we", 0),
            active_days=len(active[i])))
    horizon = ref_ms - max(settings.windows_days) * DAY_MS
    titles = sorted(((ts, t) for t, ts in state.titles.items() if horizon < ts <= ref_ms),
                    key=lambda x: (-x[0], x[1]))
    return Features(
        reference_ms=ref_ms,
        last_event_ms=state.last_ts,
        windows=tuple(windows),
        days_since_last_purchase=None if last_purchase_day is None
        else ref_day - last_purchase_day,
        recent_titles=tuple(t for _, t in titles[: settings.max_titles]),
    )



@lru_cache(maxsize=4096)
def _midnight_ms(day: int, zone_name: str) -> int:
    """Epoch ms of the start of local day ``day`` (a ``date.toordinal()``)."""
    return int(datetime.fromordinal(day).replace(tzinfo=zone(zone_name)).timestamp() * 1000)


@dataclass(frozen=True)
class Rfm:
    """A user's RFM inputs in event time: what ingest publishes for the segmenter's
    engagement tier (the ``Keys.rfm(uid)`` hash, one field per attribute, decimal strings).

    - ``last_active_ms``  the newest event (recency)
    - ``frequency``       events over the longest window
    - ``monetary``        spend over the longest window, currency units (2 decimals)
    - ``first_event_ms``  start of the oldest kept day: a lower bound of tenure
    """

    last_active_ms: int
    frequency: int
    monetary: float
    first_event_ms: int

    @classmethod
    def of(cls, state: UserState, features: Features, settings: IngestSettings
           ) -> Rfm | None:
        """The RFM of ``state`` (``features`` = its ``summarize``); None without events."""
        if state.last_ts is None:
            return None
        longest = max(features.windows, key=lambda w: w.days)
        days = [int(name.partition(":")[2]) for name in state.buckets if ":" in name]
        first = _midnight_ms(min(days), settings.timezone) if days else state.last_ts
        return cls(state.last_ts, longest.events, round(longest.spend, 2), first)

    def to_fields(self) -> dict[FieldT, EncodableT]:
        """The hash ``Keys.rfm`` holds (text values)."""
        return {"last_active_ms": str(self.last_active_ms), "frequency": str(self.frequency),
                "monetary": f"{self.monetary:.2f}", "first_event_ms": str(self.first_event_ms)}

    @classmethod
    def from_fields(cls, raw: Mapping[bytes | str, bytes | str] | Mapping[str, str]
                    ) -> Rfm | None:
        """The RFM read back from ``Keys.rfm``; None when the hash is absent or partial."""
        f = {(k.decode() if isinstance(k, bytes) else k):
             (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        try:
            return cls(int(f["last_active_ms"]), int(f["frequency"]), float(f["monetary"]),
                       int(f["first_event_ms"]))
        except (KeyError, ValueError):
            return None
