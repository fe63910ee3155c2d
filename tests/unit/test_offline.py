"""The offline path reuses the streaming code: same profiles, texts, encoder and clusterer."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import adjusted_rand_score

from segstream.config import Settings, load_settings
from segstream.encoding import Encoder
from segstream.events import Event, event_from_dict
from segstream.feature_text import render
from segstream.features import UserState, increments, summarize
from segstream.offline import TextEmbedder, build_profiles, choose_k, segment_profiles
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
