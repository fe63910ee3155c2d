"""The offline path reuses the streaming code: same profiles, texts, encoder and clusterer."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from segstream.config import Settings, load_settings
from segstream.encoding import Encoder
from segstream.errors import ConfigError
from segstream.events import Event, event_from_dict
from segstream.feature_text import render
from segstream.features import UserState, increments, summarize
from segstream.interest import InterestAggregator, catalogue_center
from segstream.offline import (
    TextEmbedder,
    build_profiles,
    build_views,
    cache_file_name,
    choose_k,
    combine_views,
    interest_at,
    item_texts,
    profiles_at,
    segment_profiles,
    segment_vectors,
)
from segstream.segmentation import SegConfig
from segstream.synthetic import PERSONAS, SyntheticStream


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def stream() -> SyntheticStream:
    return SyntheticStream(users=160, days=30, seed=11)


@pytest.fixture(scope="module")
def events(stream: SyntheticStream, settings: Settings) -> list[Event]:
    return [event_from_dict(e, settings.events.allowed_types) for e in stream.events()]


@pytest.fixture(scope="module")
def embed(settings: Settings) -> TextEmbedder:
    return TextEmbedder(Encoder.from_settings(settings.encoder))


def test_profiles_match_the_streaming_state_and_ignore_order_and_duplicates(
        events: list[Event], settings: Settings) -> None:
    shuffled = events + events[:500]  # 500 duplicates
    random.Random(0).shuffle(shuffled)
    profiles = build_profiles(shuffled, settings.ingest)
    user = events[0].user_id
    state = UserState()  # the streaming path's in-memory twin of the Redis script
    for event in events:
        if event.user_id == user:
            state.apply(increments(event, settings.ingest), settings.ingest)
    assert profiles[user].text == render(summarize(state, settings.ingest), settings.ingest)
    assert profiles[user].events == sum(1 for e in events if e.user_id == user)
    assert profiles == build_profiles(events, settings.ingest)


def test_history_before_a_time_only(events: list[Event], settings: Settings) -> None:
    cut = sorted(e.ts_ms for e in events)[len(events) // 2]
    early = build_profiles(events, settings.ingest, until_ms=cut)
    assert sum(p.events for p in early.values()) == sum(1 for e in events if e.ts_ms < cut)


def test_offline_segments_recover_the_personas(events: list[Event], settings: Settings,
                                               stream: SyntheticStream,
                                               embed: TextEmbedder) -> None:
    profiles = build_profiles(events, settings.ingest)
    result = segment_profiles(profiles, embed, SegConfig(k=len(PERSONAS), seed=0),
                              stream.end_ms)
    truth = stream.truth()
    labels = result.labels()
    ari = adjusted_rand_score([truth[u] for u in result.users],
                              [labels[u] for u in result.users])
    assert ari >= 0.8, ari
    k, scores = choose_k(result.vectors, [4, len(PERSONAS), 12], seed=0)
    assert set(scores) == {4, len(PERSONAS), 12}
    assert k in scores
    assert all(-1.0 <= sil <= 1.0 and inertia > 0 for sil, inertia in scores.values())


def test_profiles_at_many_times_equal_build_profiles_at_each(
        events: list[Event], settings: Settings) -> None:
    times = sorted(e.ts_ms for e in events)
    cuts = [times[len(times) // 4], times[len(times) // 2], times[-1] + 1]
    at = profiles_at(events + events[:100], cuts, settings.ingest)  # duplicates dropped
    for cut in cuts:
        expected = build_profiles(events, settings.ingest, until_ms=cut)
        assert {u: p.text for u, p in at[cut].items()} == {u: p.text
                                                           for u, p in expected.items()}
        assert {u: p.events for u, p in at[cut].items()} == {u: p.events
                                                             for u, p in expected.items()}


def test_interest_view_from_item_texts(events: list[Event], settings: Settings,
                                       embed: TextEmbedder, stream: SyntheticStream,
                                       tmp_path: Path) -> None:
    texts = item_texts(events)
    assert texts and all(texts.values())
    cut = sorted(e.ts_ms for e in events)[len(events) // 2]
    vectors = dict(zip(texts, embed(list(texts.values())), strict=True))
    by_time, counts = interest_at(events, [cut, stream.end_ms + 1], settings.interest, vectors)
    center = catalogue_center(vectors.values()) if settings.interest.center_items else None
    agg = InterestAggregator(settings.interest, vectors, center)
    for e in sorted((e for e in events if e.ts_ms < cut), key=lambda e: (e.ts_ms, e.event_id)):
        agg.observe(e)
    expected = agg.vectors()
    assert set(by_time[cut]) == set(expected)
    for user, vec in expected.items():
        np.testing.assert_allclose(by_time[cut][user], vec, rtol=1e-9)
    # every event is counted: embedded, or left out with weight 0 (a rating of 2.5 or less)
    assert counts["embedded"] + counts["zero_weight"] == len(events)
    assert counts["embedded"] > 0.9 * len(events)
    profiles = build_profiles(events, settings.ingest)
    views = build_views(events, profiles, embed, settings.ingest, settings.interest)
    assert views.interest.shape == views.text.shape and views.no_interest == 0
    combined = views.matrix({"interest": 1.0, "text": 0.5})
    assert combined.shape == (len(profiles), 2 * views.text.shape[1])
    np.testing.assert_allclose(np.linalg.norm(combined, axis=1) ** 2, 1.0 + 0.25, rtol=1e-5)
    seg = segment_vectors(views.users, combined, views.label_texts,
                          SegConfig(k=len(PERSONAS), seed=0), stream.end_ms)
    truth = stream.truth()
    labels = seg.labels()
    assert adjusted_rand_score([truth[u] for u in seg.users],
                               [labels[u] for u in seg.users]) >= 0.5
    with pytest.raises(ConfigError):
        combine_views([(views.text, 0.0)])


def test_embedding_cache_file_round_trips(settings: Settings, embed: TextEmbedder,
                                          tmp_path: Path) -> None:
    first = TextEmbedder(embed.encoder, cache_dir=tmp_path)
    vectors = first(["one text", "another text"])
    first.save()
    again = TextEmbedder(embed.encoder, cache_dir=tmp_path)
    assert again.loaded == 2
    np.testing.assert_array_equal(again(["another text"])[0], vectors[1])
    other = "float32" if embed.encoder.dtype != torch.float32 else "bfloat16"
    other_dtype = TextEmbedder(Encoder(embed.encoder.path, device="cpu", dtype=other),
                               cache_dir=tmp_path)
    assert other_dtype.loaded == 0  # another dtype's vectors are never read back
    assert {p.name for p in tmp_path.iterdir()} == {cache_file_name(embed.encoder)}
