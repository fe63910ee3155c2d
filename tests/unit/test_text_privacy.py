"""Feature texts (what the encoder sees, caches and may log) hold no user id or event id,
and cap every free-text field, whatever the input carries."""

from __future__ import annotations

import pytest

from segstream.config import IngestSettings
from segstream.events import event_from_dict
from segstream.feature_text import CATEGORY_CHARS, TITLE_CHARS, render
from segstream.features import UserState, increments, summarize

USER = "user-7f3a9c-PRIVATE"
TYPES = ("view", "click", "cart", "purchase")


def text_for(settings: IngestSettings, long_title: str, category: str) -> str:
    state = UserState()
    base = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    for i in range(60):
        event = event_from_dict({
            "event_id": f"{USER}-evt-{i}", "user_id": USER, "ts": base + i * 3_600_000,
            "type": TYPES[i % 4], "item_id": f"item-of-{USER}-{i % 7}",
            "category": category, "title": f"{long_title} #{i % 5}", "price": 19.5 + i,
        }, TYPES)
        state.apply(increments(event, settings), settings)
    return render(summarize(state, settings, reference_ms=base + 61 * 3_600_000), settings)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_feature_text_has_no_ids_and_caps_free_text(language: str) -> None:
    settings = IngestSettings(text_language=language)
    long_title = "Wireless earbuds " + "x" * 480  # the 512-character title limit
    category = "electronics/" + "audio-" * 30
    text = text_for(settings, long_title, category)
    assert text, "a user with 60 events has a feature text"
    assert USER not in text and "PRIVATE" not in text
    assert "evt-" not in text and "item-of" not in text
    assert len(text) <= settings.text_max_chars
    assert "x" * (TITLE_CHARS + 1) not in text  # titles cut to TITLE_CHARS
    assert "audio-" * (CATEGORY_CHARS // 6 + 1) not in text
    assert "Wireless earbuds" in text  # a cut title is still there, just capped


def test_text_length_cap_is_a_setting() -> None:
    settings = IngestSettings(text_max_chars=120)
    text = text_for(settings, "A title that goes on " * 10, "books/fiction")
    assert 0 < len(text) <= 120
    assert USER not in text
