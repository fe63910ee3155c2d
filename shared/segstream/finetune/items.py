"""Item co-occurrence pairs: items the same users take together or one after the other.

Positives of the ``cooccurrence`` objective, built only from events before ``until``:

- **basket**: two different items of one user's basket (events of one user whose times
  are at most ``basket_gap_s`` apart; 0 = the same instant, as receipt lines share it);
- **sequence**: two consecutive events of one user in different baskets, at most
  ``sequence_gap_s`` apart (the later one is the positive).

Items are identified by their text (``interest.item_text``: title and category path,
the text the interest vectors embed), so two ids
with the same text are one item and a pair of one text with itself is never made.
Sampling keeps training about co-occurrence rather than popularity: a pair's weight is
``(users(a) * users(b)) ** -popularity_power`` (``users`` = distinct users of the item),
each user gives at most ``per_user`` pairs (weighted sampling without replacement), a
text pair is kept once, and ``max_pairs`` caps the total by the same weights.
``min_support`` keeps only pairs that at least that many users took (a single basket's
chance neighbours are mostly noise in large grocery baskets).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

from segstream.errors import ConfigError, DataError
from segstream.events import Event
from segstream.interest import item_text

PairKind = Literal["basket", "sequence"]
KINDS: tuple[PairKind, ...] = ("basket", "sequence")


@dataclass(frozen=True)
class Item:
    """One item as the model sees it: its text, and the text a brand-new item would
    have with only a title."""

    item_id: str          # the first id seen with this text
    text: str
    title_text: str       # title only (the text itself when there is no title)
    users: int            # distinct users who took it before ``until``


@dataclass(frozen=True)
class ItemPair:
    """Texts of two items one user took together (basket) or in a row (sequence)."""

    anchor: str
    positive: str
    kind: PairKind
    user_id: str


@dataclass
class ItemPairs:
    """The sampled pairs, the items they use (by text) and counts for ``training.json``."""

    pairs: list[ItemPair]
    items: dict[str, Item]
    stats: dict[str, Any] = field(default_factory=dict)


def _weighted_sample(candidates: Sequence[tuple[float, Any]], k: int,
                     rng: random.Random) -> list[Any]:
    """``k`` of ``(weight, value)`` without replacement, chance by weight
    (Efraimidis-Spirakis keys), in the candidates' order."""
    if len(candidates) <= k:
        return [v for _, v in candidates]
    keyed = sorted(((math.log(1.0 - rng.random()) / w, i)
                    for i, (w, _) in enumerate(candidates)), reverse=True)[:k]
    return [candidates[i][1] for _, i in sorted(keyed, key=lambda x: x[1])]


def _baskets(history: Sequence[tuple[int, str]], gap_ms: int) -> list[list[tuple[int, str]]]:
    baskets: list[list[tuple[int, str]]] = []
    for ts, text in history:
        if baskets and ts - baskets[-1][-1][0] <= gap_ms:
            baskets[-1].append((ts, text))
        else:
            baskets.append([(ts, text)])
    return baskets


def _candidates(history: Sequence[tuple[int, str]], kinds: Sequence[PairKind], basket_gap_ms: int,
                sequence_gap_ms: int, max_basket_items: int, rng: random.Random
                ) -> dict[tuple[str, str], PairKind]:
    """One user's candidate pairs (``(anchor, positive)`` -> kind), each text pair once."""
    out: dict[tuple[str, str], PairKind] = {}
    seen: set[frozenset[str]] = set()

    def add(a: str, b: str, kind: PairKind) -> None:
        key = frozenset((a, b))
        if a != b and key not in seen:
            seen.add(key)
            out[(a, b)] = kind

    baskets = _baskets(history, basket_gap_ms)
    if "basket" in kinds:
        for basket in baskets:
            texts = list(dict.fromkeys(t for _, t in basket))
            if len(texts) > max_basket_items:
                texts = rng.sample(texts, max_basket_items)
            for i, a in enumerate(texts):
                for b in texts[i + 1:]:
                    add(*((a, b) if rng.random() < 0.5 else (b, a)), "basket")
    if "sequence" in kinds:
        for early, late in pairwise(baskets):
            if late[0][0] - early[-1][0] <= sequence_gap_ms:
                add(early[-1][1], late[0][1], "sequence")
        if "basket" not in kinds:  # without baskets, a row inside one is a sequence too
            for basket in baskets:
                for (_, a), (_, b) in pairwise(basket):
                    add(a, b, "sequence")
    return out


def make_item_pairs(events: Iterable[Event], *, until_ms: int | None = None,
                    kinds: Sequence[PairKind] = KINDS, basket_gap_s: float = 0.0,
                    sequence_gap_s: float = 86_400.0, per_user: int = 50, max_pairs: int = 0,
                    popularity_power: float = 0.5, max_basket_items: int = 30,
                    min_support: int = 1, seed: int = 0) -> ItemPairs:
    """Sampled co-occurrence pairs from the events before ``until_ms`` (module doc)."""
    if not kinds or any(k not in KINDS for k in kinds):
        raise ConfigError(f"pair kinds must be some of {', '.join(KINDS)}, not {kinds!r}")
    if per_user < 1 or max_pairs < 0 or max_basket_items < 2 or min_support < 1:
        raise ConfigError("pairs per user and min support must be >= 1, max pairs >= 0, "
                          "basket items >= 2")
    if basket_gap_s < 0 or sequence_gap_s < 0 or popularity_power < 0:
        raise ConfigError("basket and sequence gaps and the popularity power must be >= 0")
    rng = random.Random(seed)
    by_user: dict[str, dict[str, Event]] = defaultdict(dict)
    items: dict[str, Item] = {}
    stats: Counter[str] = Counter()
    for e in events:
        if until_ms is not None and e.ts_ms >= until_ms:
            stats["events_after_until"] += 1
            continue
        by_user[e.user_id].setdefault(e.event_id, e)  # duplicate event ids count once
    histories: dict[str, list[tuple[int, str]]] = {}
    item_users: dict[str, set[str]] = defaultdict(set)
    for user in sorted(by_user):
        history = []
        for e in sorted(by_user[user].values(), key=lambda e: (e.ts_ms, e.event_id)):
            text = item_text(e.title, e.category)
            if text is None:
                stats["events_without_text"] += 1
                continue
            if text not in items:
                items[text] = Item(e.item_id, text, item_text(e.title, None) or text, 0)
            item_users[text].add(user)
            history.append((e.ts_ms, text))
        stats["events_used"] += len(history)
        histories[user] = history
    popularity = {t: len(u) for t, u in item_users.items()}
    items = {t: Item(i.item_id, t, i.title_text, popularity[t]) for t, i in items.items()}

    def weight(a: str, b: str) -> float:
        return float((popularity[a] * popularity[b]) ** -popularity_power)

    chosen: list[tuple[float, ItemPair]] = []
    kept: set[frozenset[str]] = set()
    per_user_cands = {user: _candidates(history, kinds, int(basket_gap_s * 1000),
                                        int(sequence_gap_s * 1000), max_basket_items, rng)
                      for user, history in histories.items()}
    support: Counter[frozenset[str]] = Counter()
    if min_support > 1:
        support.update(frozenset(ab) for c in per_user_cands.values() for ab in c)
    for user, cands in per_user_cands.items():
        for kind in cands.values():
            stats[f"candidates_{kind}"] += 1
        if min_support > 1:
            before = len(cands)
            cands = {ab: k for ab, k in cands.items() if support[frozenset(ab)] >= min_support}
            stats["candidates_below_support"] += before - len(cands)
        picked = _weighted_sample([(weight(a, b), (a, b, k)) for (a, b), k in cands.items()],
                                  per_user, rng)
        stats["users_capped"] += len(cands) > per_user
        for a, b, kind in picked:
            key = frozenset((a, b))
            if key in kept:
                stats["duplicates_dropped"] += 1
                continue
            kept.add(key)
            chosen.append((weight(a, b), ItemPair(a, b, kind, user)))
    if max_pairs and len(chosen) > max_pairs:
        chosen = [(0.0, p) for p in _weighted_sample(chosen, max_pairs, rng)]
    pairs = [p for _, p in chosen]
    used = {t for p in pairs for t in (p.anchor, p.positive)}
    stats.update({f"pairs_{k}": sum(p.kind == k for p in pairs) for k in KINDS})
    summary: dict[str, Any] = dict(sorted(stats.items()))
    summary |= {"users": len(histories), "users_with_pairs": len({p.user_id for p in pairs}),
                "items": len(items), "items_in_pairs": len(used)}
    return ItemPairs(pairs, items, summary)


def split_items(pairs: Sequence[ItemPair], holdout: float, seed: int = 0
                ) -> tuple[list[ItemPair], list[ItemPair]]:
    """(train, held-out): a seeded share ``holdout`` of the item texts is held out and
    every pair that touches one goes to the held-out side, so the held-out items are
    never seen in training (new items, for the cold-start check)."""
    if not 0 < holdout < 1:
        raise ConfigError("holdout must be between 0 and 1")
    texts = sorted({t for p in pairs for t in (p.anchor, p.positive)})
    random.Random(seed).shuffle(texts)
    held_items = set(texts[:max(2, round(len(texts) * holdout))])
    train = [p for p in pairs if p.anchor not in held_items and p.positive not in held_items]
    held = [p for p in pairs if p.anchor in held_items or p.positive in held_items]
    if len(held) < 2 or len(train) < 2:
        raise DataError(f"{len(pairs)} item pairs over {len(texts)} items: too few to hold "
                          f"{holdout:.0%} of the items out")
    return train, held


def held_items(train: Sequence[ItemPair], held: Sequence[ItemPair]) -> set[str]:
    """Item texts of the held-out pairs that no training pair uses."""
    seen = {t for p in train for t in (p.anchor, p.positive)}
    return {t for p in held for t in (p.anchor, p.positive)} - seen


def describe_items(train: Sequence[ItemPair], held: Sequence[ItemPair]) -> dict[str, Any]:
    """Pair counts for ``training.json``."""
    return {"train": len(train), "held_out": len(held),
            "train_by_kind": dict(Counter(p.kind for p in train)),
            "held_out_by_kind": dict(Counter(p.kind for p in held)),
            "train_users": len({p.user_id for p in train}),
            "held_out_users": len({p.user_id for p in held}),
            "train_items": len({t for p in train for t in (p.anchor, p.positive)}),
            "held_out_items": len(held_items(train, held)),
            "positives": "texts of two items one user took in the same basket or in a row",
            "held_out_by": "item (pairs touching a held-out item)"}
