"""A seeded stream of behaviour events from users with known interest personas.

Each user follows one of ``PERSONAS`` (categories, event-type mix, hours of day, weekend
habit, spend), with per-user variation, sessions and occasional bursts, out-of-persona
noise, purchases with prices and quantities. Optional extras: a share of malformed records
(every kind in ``MALFORMED``), exact duplicates (same event id re-sent) and bot users
that fire hundreds of views a minute. The same arguments always give the same stream;
``truth()`` (and the JSON file ``write_truth`` saves with a run) tells each user's persona,
so clustering quality can be scored (adjusted Rand index) against it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

DAY_MS = 86_400_000
BOT = "bot"


@dataclass(frozen=True)
class Category:
    subcategories: tuple[str, ...]
    nouns: tuple[str, ...]
    price: tuple[float, float]  # typical low/high unit price


CATALOG: dict[str, Category] = {
    "electronics": Category(("audio", "phones", "computers", "cameras"), (
        "wireless earbuds", "noise-cancelling headphones", "USB-C charger", "phone case",
        "mechanical keyboard", "4K monitor", "portable SSD", "action camera", "smartwatch",
        "bluetooth speaker", "gaming mouse", "laptop stand"), (15, 600)),
    "books": Category(("fiction", "history", "science", "poetry"), (
        "mystery novel", "history of Rome", "astronomy guide", "poetry collection",
        "fantasy saga", "biography", "cookbook classic", "philosophy primer",
        "science essays", "short stories"), (6, 45)),
    "fashion": Category(("women", "men", "shoes", "accessories"), (
        "linen dress", "denim jacket", "leather boots", "silk scarf", "summer sandals",
        "wool coat", "handbag", "sunglasses", "pleated skirt", "cashmere sweater"), (20, 250)),
    "beauty": Category(("skincare", "makeup", "fragrance"), (
        "face serum", "matte lipstick", "eau de parfum", "night cream", "eyeshadow palette",
        "sunscreen", "hair oil"), (8, 120)),
    "grocery": Category(("fresh", "pantry", "drinks"), (
        "olive oil", "organic eggs", "espresso beans", "sourdough bread", "basmati rice",
        "green tea", "dark chocolate", "sparkling water", "fresh pasta"), (2, 25)),
    "kitchen": Category(("cookware", "appliances", "tableware"), (
        "cast iron skillet", "chef knife", "stand mixer", "dutch oven", "spice rack",
        "rice cooker", "cutting board"), (15, 300)),
    "games": Category(("console", "pc", "board"), (
        "open-world RPG", "racing game", "strategy game", "co-op shooter", "puzzle game",
        "board game", "controller", "gaming headset"), (10, 80)),
    "music": Category(("rock", "jazz", "electronic", "classical"), (
        "indie rock album", "jazz standards", "techno mix", "symphony recording",
        "vinyl reissue", "live session", "lo-fi playlist", "piano concerto"), (1, 30)),
    "sports": Category(("running", "cycling", "camping", "fitness"), (
        "trail running shoes", "cycling helmet", "camping tent", "yoga mat", "dumbbells",
        "hiking backpack", "water bottle", "sports watch"), (10, 300)),
    "baby": Category(("diapers", "feeding", "nursery"), (
        "diaper pack", "baby bottle", "baby monitor", "stroller", "baby formula",
        "swaddle blanket", "teething ring"), (5, 350)),
    "toys": Category(("educational", "outdoor", "plush"), (
        "building blocks", "plush bear", "puzzle set", "toy train", "art kit",
        "kick scooter"), (8, 90)),
}
ADJECTIVES = ("classic", "compact", "premium", "everyday", "deluxe", "eco", "pro", "mini")


@dataclass(frozen=True)
class Persona:
    """An interest persona: what, how, when and how much a user of it does."""

    name: str
    categories: dict[str, float]
    types: dict[str, float]
    hours: tuple[tuple[float, float], ...]  # (centre hour, weight); spread ~1.5 h
    weekend: float                           # activity multiplier on Saturday/Sunday
    active_days: float                       # share of days with activity
    events_per_session: float
    spend: float                             # multiplier on catalog prices


_SHOP = {"view": 0.55, "click": 0.2, "cart": 0.1, "purchase": 0.06, "like": 0.05,
         "share": 0.02, "comment": 0.02}
PERSONAS: tuple[Persona, ...] = (
    Persona("tech_enthusiast", {"electronics": 0.75, "games": 0.15, "books": 0.1},
            {**_SHOP, "view": 0.5, "click": 0.3}, ((21.0, 1.0),), 1.0, 0.5, 6, 1.6),
    Persona("bookworm", {"books": 0.85, "music": 0.1, "kitchen": 0.05},
            {**_SHOP, "rate": 0.12, "comment": 0.06}, ((8.0, 0.6), (22.5, 0.4)), 2.2, 0.4, 4,
            0.8),
    Persona("fashionista", {"fashion": 0.6, "beauty": 0.35, "sports": 0.05},
            {**_SHOP, "cart": 0.2, "like": 0.12, "share": 0.06}, ((14.5, 1.0),), 1.3, 0.55,
            7, 1.0),
    Persona("home_cook", {"grocery": 0.6, "kitchen": 0.35, "books": 0.05},
            {**_SHOP, "purchase": 0.2, "cart": 0.15}, ((9.5, 1.0),), 0.5, 0.7, 5, 0.7),
    Persona("night_gamer", {"games": 0.8, "electronics": 0.15, "music": 0.05},
            {"view": 0.3, "click": 0.2, "play": 0.35, "purchase": 0.04, "like": 0.06,
             "comment": 0.05}, ((1.5, 1.0),), 1.4, 0.6, 8, 0.9),
    Persona("music_fan", {"music": 0.9, "electronics": 0.1},
            {"play": 0.6, "like": 0.15, "share": 0.1, "view": 0.12, "purchase": 0.03},
            ((7.5, 0.5), (17.5, 0.5)), 0.8, 0.75, 9, 0.5),
    Persona("outdoor_athlete", {"sports": 0.75, "fashion": 0.15, "grocery": 0.1},
            {**_SHOP, "view": 0.6}, ((6.5, 1.0),), 2.6, 0.35, 5, 1.2),
    Persona("new_parent", {"baby": 0.65, "toys": 0.25, "grocery": 0.1},
            {**_SHOP, "purchase": 0.12, "cart": 0.14}, ((3.0, 0.6), (13.0, 0.4)), 1.0, 0.6,
            5, 1.1),
)
PERSONA_BY_NAME = {p.name: p for p in PERSONAS}


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def item(rng: random.Random, category: str) -> tuple[str, str, str, float]:
    """(item_id, category path, title, unit price) of a random catalog item."""
    cat = CATALOG[category]
    noun_i = rng.randrange(len(cat.nouns))
    adj_i = rng.randrange(len(ADJECTIVES))
    sub = cat.subcategories[noun_i % len(cat.subcategories)]
    low, high = cat.price
    price = math.exp(math.log(low) + (math.log(high) - math.log(low)) * ((noun_i * 7 + adj_i)
                                                                        % 10) / 9)
    title = f"{ADJECTIVES[adj_i].capitalize()} {cat.nouns[noun_i]}"
    return f"{category[:4]}-{noun_i:02d}{adj_i}", f"{category}/{sub}", title, round(price, 2)


def _variant(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not ...}


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# Malformed records: name -> (make bytes from a valid event dict, expected DLQ reason).
MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], bytes | None], str]] = {
    "truncated-json": (lambda e: _json(e)[:-7], "not_json"),
    "garbage-bytes": (lambda e: b"\xff\xd8\xff\xe0\x00\x10JFIF", "not_utf8"),
    "utf16-json": (lambda e: json.dumps(e).encode("utf-16"), "not_utf8"),
    "empty-value": (lambda e: b"", "not_json"),
    "tombstone": (lambda e: None, "not_json"),
    "csv-line": (lambda e: f"{e['event_id']},{e['user_id']},{e['type']}".encode(), "not_json"),
    "json-array": (lambda e: _json([e]), "not_object"),
    "json-number": (lambda e: b"3.14", "not_object"),
    "json-null": (lambda e: b"null", "not_object"),
    "no-event-id": (lambda e: _json(_variant(e, event_id=...)), "missing_field"),
    "no-user-id": (lambda e: _json(_variant(e, user_id=...)), "missing_field"),
    "no-ts": (lambda e: _json(_variant(e, ts=...)), "missing_field"),
    "no-type": (lambda e: _json(_variant(e, type=...)), "missing_field"),
    "null-item-id": (lambda e: _json(_variant(e, item_id=None)), "missing_field"),
    "user-id-number": (lambda e: _json(_variant(e, user_id=12345)), "wrong_type"),
    "item-id-list": (lambda e: _json(_variant(e, item_id=["a", "b"])), "wrong_type"),
    "price-text": (lambda e: _json(_variant(e, price="12,50 EUR")), "wrong_type"),
    "quantity-half": (lambda e: _json(_variant(e, quantity=2.5)), "wrong_type"),
    "rating-text": (lambda e: _json(_variant(e, rating="five")), "wrong_type"),
    "ts-object": (lambda e: _json(_variant(e, ts={"ms": 1})), "wrong_type"),
    "user-id-too-long": (lambda e: _json(_variant(e, user_id="u" * 200)), "too_long"),
    "category-too-long": (lambda e: _json(_variant(e, category="c/" * 200)), "too_long"),
    "empty-event-id": (lambda e: _json(_variant(e, event_id="")), "bad_value"),
    "blank-type": (lambda e: _json(_variant(e, type="  ")), "bad_value"),
    "negative-price": (lambda e: _json(_variant(e, price=-19.99)), "bad_value"),
    "nan-price": (lambda e: _json(e)[:-1] + b', "price": NaN}', "bad_value"),
    "zero-quantity": (lambda e: _json(_variant(e, quantity=0)), "bad_value"),
    "lone-surrogate-user": (lambda e: _json(e).replace(e["user_id"].encode(), b"\\ud800x", 1),
                            "bad_value"),
    "ts-words": (lambda e: _json(_variant(e, ts="last tuesday")), "bad_timestamp"),
    "ts-naive": (lambda e: _json(_variant(e, ts="2026-11-28T10:00:00")), "bad_timestamp"),
    "ts-seconds": (lambda e: _json(_variant(e, ts=1_795_857_300)), "bad_timestamp"),
    "ts-epoch-zero": (lambda e: _json(_variant(e, ts=0)), "bad_timestamp"),
    "unknown-type": (lambda e: _json(_variant(e, type="teleport")), "unknown_type"),
    "oversize": (lambda e: _json(_variant(e, blob="x" * 70_000)), "too_large"),
}


def bot_personas(n_users: int, seed: int, bots: float) -> set[int]:
    rng = random.Random(f"{seed}:bots")
    return {i for i in range(n_users) if rng.random() < bots}


@dataclass
class SyntheticStream:
    """The generator; iterate ``records()`` for ``(key, value)`` pairs in event-time order.

    ``malformed``, ``duplicates`` are shares of the valid events; ``bots`` is the share of
    users that are bots; ``activity`` scales how often users are active. ``end_ms`` is the
    newest possible event time.
    """

    users: int = 1_000
    days: int = 30
    seed: int = 7
    end_ms: int = 1_795_857_300_000
    malformed: float = 0.0
    duplicates: float = 0.0
    bots: float = 0.0
    noise: float = 0.08
    activity: float = 0.5
    timezone: str = "UTC"
    counts: dict[str, int] = field(default_factory=dict)

    def user_id(self, i: int) -> str:
        return f"user-{i:06d}"

    def persona_index(self, i: int) -> int:
        return random.Random(f"{self.seed}:persona:{i}").randrange(len(PERSONAS))

    def truth(self) -> dict[str, str]:
        """Each user's persona name (``bot`` for bot users)."""
        bots = bot_personas(self.users, self.seed, self.bots)
        return {self.user_id(i): BOT if i in bots else PERSONAS[self.persona_index(i)].name
                for i in range(self.users)}

    def write_truth(self, path: str | Path) -> Path:
        """Save the run's arguments and personas as JSON next to the stream it describes."""
        path = Path(path)
        args = {k: getattr(self, k) for k in ("users", "days", "seed", "end_ms", "malformed",
                                              "duplicates", "bots", "noise", "activity",
                                              "timezone")}
        path.write_text(json.dumps({"generator": "segstream.synthetic", "args": args,
                                    "personas": [p.name for p in PERSONAS],
                                    "users": self.truth()}, indent=1))
        return path

    def _day_events(self, i: int, day: int, start: datetime) -> list[dict[str, Any]]:
        persona = PERSONAS[self.persona_index(i)]
        user_rng = random.Random(f"{self.seed}:user:{i}")
        activity = user_rng.uniform(0.6, 1.5)
        rng = random.Random(f"{self.seed}:{i}:{day}")
        date = start + timedelta(days=day)
        weekend = date.weekday() >= 5
        habit = persona.weekend if weekend else 1.0
        p_active = min(0.95, persona.active_days * activity * self.activity * habit)
        if rng.random() >= p_active:
            return []
        events: list[dict[str, Any]] = []
        uid = self.user_id(i)
        for s in range(1 + (rng.random() < 0.3)):
            centre, _ = rng.choices(persona.hours, weights=[w for _, w in persona.hours])[0]
            hour = (centre + rng.gauss(0, 1.2)) % 24
            t = date + timedelta(hours=hour)
            burst = rng.random() < 0.05
            n = max(1, int(rng.expovariate(1 / persona.events_per_session))) + (20 if burst
                                                                              else 0)
            for k in range(n):
                t += timedelta(seconds=rng.uniform(2, 8) if burst else rng.uniform(10, 240))
                category = (rng.choice(list(CATALOG)) if rng.random() < self.noise
                            else _weighted(rng, persona.categories))
                item_id, path, title, price = item(rng, category)
                etype = _weighted(rng, persona.types)
                event: dict[str, Any] = {
                    "event_id": f"e{self.seed}-{i}-{day}-{s}-{k}", "user_id": uid,
                    "ts": int(t.timestamp() * 1000), "type": etype, "item_id": item_id,
                    "category": path, "title": title}
                if etype in ("purchase", "cart"):
                    event["price"] = round(price * persona.spend * rng.uniform(0.8, 1.25), 2)
                    event["quantity"] = 1 if rng.random() < 0.8 else rng.randint(2, 4)
                if etype == "view":
                    event["dwell_s"] = round(rng.expovariate(1 / 30), 1)
                if etype == "rate":
                    event["rating"] = rng.randint(1, 5)
                events.append(event)
        return events

    def _bot_events(self, i: int, day: int, start: datetime) -> list[dict[str, Any]]:
        rng = random.Random(f"{self.seed}:bot:{i}:{day}")
        if rng.random() >= 0.25:
            return []
        t0 = start + timedelta(days=day, hours=rng.uniform(0, 23))
        uid = self.user_id(i)
        events = []
        for k in range(rng.randint(200, 400)):
            category = rng.choice(list(CATALOG))
            item_id, path, title, _ = item(rng, category)
            events.append({"event_id": f"b{self.seed}-{i}-{day}-{k}", "user_id": uid,
                           "ts": int((t0 + timedelta(seconds=k * 0.15)).timestamp() * 1000),
                           "type": "view", "item_id": item_id, "category": path,
                           "title": title})
        return events

    def events(self) -> Iterator[dict[str, Any]]:
        """Valid events (bots included), in event-time order."""
        zone = ZoneInfo(self.timezone)
        end = datetime.fromtimestamp(self.end_ms / 1000, tz=zone)
        start = (end - timedelta(days=self.days - 1)).replace(hour=0, minute=0, second=0,
                                                             microsecond=0)
        bots = bot_personas(self.users, self.seed, self.bots)
        for day in range(self.days):
            batch: list[dict[str, Any]] = []
            for i in range(self.users):
                batch.extend(self._bot_events(i, day, start) if i in bots
                             else self._day_events(i, day, start))
            batch.sort(key=lambda e: (e["ts"], e["event_id"]))
            for event in batch:
                if event["ts"] <= self.end_ms:
                    yield event

    def records(self) -> Iterator[tuple[bytes, bytes | None]]:
        """``(key, value)`` Kafka records: valid events plus malformed and duplicates."""
        rng = random.Random(f"{self.seed}:extras")
        kinds = list(MALFORMED)
        recent: list[bytes] = []
        counts = self.counts
        counts.clear()
        counts.update(valid=0, malformed=0, duplicates=0)
        for n, event in enumerate(self.events()):
            if n % 3 == 0:  # both timestamp forms of the contract appear in the stream
                event = {**event, "ts": _iso(event["ts"])}
            value = _json(event)
            key = event["user_id"].encode()
            yield key, value
            counts["valid"] += 1
            recent.append(value)
            if len(recent) > 64:
                recent.pop(0)
            if self.duplicates and rng.random() < self.duplicates:
                dup = rng.choice(recent)
                yield json.loads(dup)["user_id"].encode(), dup
                counts["duplicates"] += 1
            if self.malformed and rng.random() < self.malformed:
                make, _ = MALFORMED[kinds[counts["malformed"] % len(kinds)]]
                yield key, make(event)
                counts["malformed"] += 1


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=ZoneInfo("UTC")).isoformat(
        timespec="milliseconds")


def load_truth(path: str | Path) -> dict[str, str]:
    """The ``user_id -> persona`` map saved by ``write_truth``."""
    return dict(json.loads(Path(path).read_text())["users"])
