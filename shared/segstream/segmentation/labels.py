"""Readable segments: c-TF-IDF terms over the members' feature texts, and text diffs.

Each segment keeps decayed term counts of the texts its members were assigned with (so a
label survives a batch that brings it no members). A term scores
``tf(term, segment) * log(1 + A / f(term))`` with ``A`` the mean number of terms per
segment and ``f`` the term's count over all segments (BERTopic's class-based TF-IDF):
terms every segment shares (the text template) sink, distinguishing ones rise.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

if TYPE_CHECKING:
    from segstream.segmentation.core import OnlineSegmenter

# Words of the feature-text template that never distinguish anyone, and its activity
# vocabulary (event types, times of day, week pattern, spend): segment labels name
# interests (categories, item terms), engagement is the separate RFM tier.
TEMPLATE_WORDS = frozenset({
    "last", "days", "day", "mostly", "recently", "worth", "active", "events", "event",
    "users", "user",
})
ACTIVITY_WORDS = frozenset({
    "view", "views", "click", "clicks", "add-to-cart", "add-to-carts", "purchase",
    "purchases", "like", "likes", "share", "shares", "comment", "comments", "play", "plays",
    "rating", "ratings", "night", "morning", "afternoon", "evening", "evenings", "weekday",
    "weekdays", "weekend", "weekends", "week", "spent", "latest", "activity",
})
STOP = frozenset(ENGLISH_STOP_WORDS) | TEMPLATE_WORDS | ACTIVITY_WORDS
_WORD = re.compile(r"[a-z][a-z0-9&'+-]*[a-z0-9+]|[a-z]")
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")
MAX_TERMS = 400


def terms(text: str) -> list[str]:
    """Unigrams and adjacent-word bigrams of ``text`` without stop words or numbers."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOP and len(w) > 1]
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def add_text(counts: dict[str, float], text: str, weight: float = 1.0) -> None:
    """Add one member's text to a segment's term counts (in place, pruned to the top)."""
    for term in terms(text):
        counts[term] = counts.get(term, 0.0) + weight
    if len(counts) > MAX_TERMS * 2:
        keep = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TERMS]
        counts.clear()
        counts.update(keep)


def decay(counts: dict[str, float], factor: float, floor: float = 1e-3) -> None:
    """Multiply every count by ``factor`` and drop the ones that faded away."""
    for term in list(counts):
        counts[term] *= factor
        if counts[term] < floor:
            del counts[term]


def ctfidf(classes: Mapping[str, Mapping[str, float]]) -> dict[str, list[tuple[str, float]]]:
    """Each class's terms ranked by class-based TF-IDF (best first, ties by name)."""
    totals = {c: sum(tc.values()) for c, tc in classes.items()}
    nonempty = [t for t in totals.values() if t > 0]
    if not nonempty:
        return {c: [] for c in classes}
    avg = sum(nonempty) / len(nonempty)
    freq: dict[str, float] = {}
    for tc in classes.values():
        for term, n in tc.items():
            freq[term] = freq.get(term, 0.0) + n
    ranked = {}
    for c, tc in classes.items():
        total = totals[c] or 1.0
        scores = [(t, (n / total) * math.log(1 + avg / freq[t])) for t, n in tc.items() if n > 0]
        ranked[c] = sorted(scores, key=lambda ts: (-ts[1], ts[0]))
    return ranked


def pick_terms(ranked: Iterable[tuple[str, float]], n: int) -> list[str]:
    """The top ``n`` terms, skipping a unigram already contained in a chosen bigram and
    vice versa, so labels do not repeat themselves."""
    chosen: list[str] = []
    for term, _ in ranked:
        words = set(term.split())
        if any(words & set(c.split()) for c in chosen):
            continue
        chosen.append(term)
        if len(chosen) == n:
            break
    return chosen


def label_and_description(ranked: list[tuple[str, float]], label_terms: int,
                          description_terms: int) -> tuple[str, str]:
    """A short label (top distinguishing terms) and a one-sentence description."""
    top = pick_terms(ranked, max(label_terms, description_terms))
    if not top:
        return "unlabelled", "No feature text seen yet."
    label = " / ".join(top[:label_terms])
    return label, f"Distinguished by: {', '.join(top[:description_terms])}."


def text_changes(old: str | None, new: str) -> dict[str, list[str]]:
    """The sentences of a feature text added and removed since ``old`` (order kept)."""
    before = [s.strip() for s in _SENTENCE.split(old or "") if s.strip()]
    after = [s.strip() for s in _SENTENCE.split(new) if s.strip()]
    return {
        "added": [s for s in after if s not in before],
        "removed": [s for s in before if s not in after],
    }


def relabel(model: OnlineSegmenter) -> None:
    """Label and describe every active segment and live family of ``model`` from the
    c-TF-IDF of their members' decayed term counts (a label without terms is kept)."""
    c = model.config
    ranked = ctfidf({sid: model.segments[sid].terms for sid in model.slot_ids})
    for sid, found in ranked.items():
        seg = model.segments[sid]
        if not found:
            continue  # keep the previous label rather than blanking it
        seg.label, seg.description = label_and_description(found, c.label_terms,
                                                           c.description_terms)
        seg.top_terms = pick_terms(found, c.description_terms)
    fam_terms: dict[str, dict[str, float]] = {}
    for fid, fam in model.families.items():
        if fam.retired_ms is not None:
            continue
        merged: dict[str, float] = {}
        for sid in fam.members:
            for t, n in model.segments[sid].terms.items():
                merged[t] = merged.get(t, 0.0) + n
        fam_terms[fid] = merged
    for fid, found in ctfidf(fam_terms).items():
        if found:
            fam = model.families[fid]
            fam.label, fam.description = label_and_description(found, c.label_terms,
                                                               c.description_terms)
