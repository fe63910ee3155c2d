"""Window pairs: the feature texts of two neighbouring, disjoint time windows of one user.

The positives of the ``contrastive`` objectives, rendered by the same ``features`` /
``feature_text`` code as the streaming path.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from segstream.config import IngestSettings
from segstream.errors import ConfigError, DataError
from segstream.events import Event
from segstream.feature_text import render
from segstream.features import UserState, increments, summarize, top_category


@dataclass(frozen=True)
class Pair:
    """Feature texts of two neighbouring, disjoint time windows of one user."""

    user_id: str
    anchor: str                   # the earlier window
    positive: str                 # the window right after it
    next_category: str | None     # most frequent top category of the later window
    anchor_ms: tuple[int, int]    # first and last event time of each window
    positive_ms: tuple[int, int]


def window_text(events: Sequence[Event], settings: IngestSettings) -> str | None:
    """The feature text of one user's ``events`` (time-ordered) as ingest would render it;
    None when no event is applied (e.g. all dropped by the bot-rate rule)."""
    state = UserState()
    applied = sum(state.apply(increments(e, settings), settings) == "applied" for e in events)
    if not applied:
        return None
    return render(summarize(state, settings), settings)


def _top(events: Sequence[Event]) -> str | None:
    counts = Counter(c for c in (top_category(e.category) for e in events) if c)
    if not counts:
        return None
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _cuts(ts: Sequence[int], windows: int) -> list[int]:
    """Indices that split time-ordered ``ts`` into ``windows`` chunks of about equal size,
    moved forward to the next change of timestamp so no instant spans two windows."""
    n = len(ts)
    cuts: list[int] = []
    for w in range(1, windows):
        c = max(round(n * w / windows), (cuts[-1] + 1) if cuts else 1)
        while c < n and ts[c] == ts[c - 1]:
            c += 1
        if c >= n:
            break
        cuts.append(c)
    return cuts


def make_pairs(events: Iterable[Event], settings: IngestSettings, *, pairs_per_user: int = 1,
               min_events: int = 3, until_ms: int | None = None) -> list[Pair]:
    """Positive pairs from every user with at least ``2 * min_events`` events before
    ``until_ms``: the timeline is cut into up to ``pairs_per_user + 1`` windows of at least
    ``min_events`` events each and every two neighbouring windows form a pair."""
    if pairs_per_user < 1 or min_events < 1:
        raise ConfigError("pairs_per_user and min_events must be at least 1")
    by_user: dict[str, dict[str, Event]] = defaultdict(dict)
    for e in events:
        if until_ms is None or e.ts_ms < until_ms:
            by_user[e.user_id].setdefault(e.event_id, e)  # duplicate event ids count once
    pairs: list[Pair] = []
    for user in sorted(by_user):
        history = sorted(by_user[user].values(), key=lambda e: (e.ts_ms, e.event_id))
        windows = min(pairs_per_user + 1, len(history) // min_events)
        if windows < 2:
            continue
        bounds = [0, *_cuts([e.ts_ms for e in history], windows), len(history)]
        chunks: list[list[Event]] = []
        for a, b in pairwise(bounds):
            if chunks and (b - a < min_events or len(chunks[-1]) < min_events):
                chunks[-1] = chunks[-1] + history[a:b]  # too small: join the window before
            else:
                chunks.append(history[a:b])
        texts = [window_text(c, settings) for c in chunks]
        for i in range(len(chunks) - 1):
            early, late = chunks[i], chunks[i + 1]
            anchor, positive = texts[i], texts[i + 1]
            if anchor is None or positive is None:
                continue
            pairs.append(Pair(user, anchor, positive, _top(late),
                              (early[0].ts_ms, early[-1].ts_ms), (late[0].ts_ms, late[-1].ts_ms)))
    return pairs


def split_users(pairs: Sequence[Pair], holdout: float, seed: int = 0
                ) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) with every user's pairs on one side only."""
    if not 0 < holdout < 1:
        raise ConfigError("holdout must be between 0 and 1")
    users = sorted({p.user_id for p in pairs})
    random.Random(seed).shuffle(users)
    n_held = max(2, round(len(users) * holdout))
    if len(users) - n_held < 2:
        raise DataError(f"{len(users)} users with pairs: too few to hold {holdout:.0%} out")
    held = set(users[:n_held])
    return ([p for p in pairs if p.user_id not in held], [p for p in pairs if p.user_id in held])


def describe_windows(train: Sequence[Pair], held: Sequence[Pair]) -> dict[str, Any]:
    """Pair counts for ``training.json``."""
    return {"train": len(train), "held_out": len(held),
            "train_users": len({p.user_id for p in train}),
            "held_out_users": len({p.user_id for p in held}),
            "positives": "feature texts of two neighbouring disjoint time windows of one user",
            "held_out_by": "user"}
