"""The interest path end to end on the real broker, Redis and model: events → ingest's
interest state → items embedded → users' interest vectors, checked against a recount."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import redis
import torch

from segstream.config import Settings
from segstream.encoding import Encoder, text_hash, vec_from_bytes
from segstream.feature_store import FeatureStore
from segstream.redis_io import Keys
from segstream.synthetic import SyntheticStream
from segstream_services.encoder.items import ItemVectors, read_center
from segstream_services.encoder.service import BatchReport, EncoderWorker
from segstream_services.encoder.views import combine, interest_vector
from segstream_services.ingest.service import IngestService
from tests.helpers import create_event_topics, wait_until
from tests.integration.test_ingest import produce

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.set_num_threads(2)
    return Encoder()


def settings_for(infra: Settings, unique: str, interest: float = 1.0, text: float = 0.0,
                 **encoder: Any) -> Settings:
    return infra.model_copy(update={
        "topics": infra.topics.model_copy(update={"events": f"{unique}.events",
                                                  "dlq": f"{unique}.dlq"}),
        "redis": infra.redis.model_copy(update={"key_prefix": unique}),
        "ingest": infra.ingest.model_copy(update={"group_id": f"{unique}.ingest",
                                                  "metrics_port": 0}),
        "encoder": infra.encoder.model_copy(update={"metrics_port": 0, "max_wait_ms": 0,
                                                    **encoder}),
        "interest": infra.interest.model_copy(update={
            "view_weights": {"interest": interest, "text": text}})})


def ingest(settings: Settings, events: list[dict[str, Any]], group: str | None = None
           ) -> None:
    if group:
        settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(
            update={"group_id": group})})
    produce(settings, [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])
    IngestService(settings).run(idle_exit_s=3)


def drain(worker: EncoderWorker, timeout_s: float = 120.0) -> list[BatchReport]:
    reports: list[BatchReport] = []
    client, keys = worker.client, worker.keys

    def empty() -> bool:
        result = worker.step()
        worker.text_step()
        if isinstance(result, BatchReport):
            reports.append(result)
        return client.zcard(keys.dirty()) + client.zcard(keys.claims()) + \
            client.zcard(keys.text_due()) == 0

    wait_until(empty, timeout_s=timeout_s, interval_s=0.05, what="an empty queue")
    return reports


def recount(settings: Settings, events: list[dict[str, Any]], client: redis.Redis,
            version: str) -> dict[str, np.ndarray]:
    """Each user's interest vector from the stored item vectors and the event weights,
    counted here with numpy (no segstream aggregation code)."""
    cfg, keys = settings.interest, Keys(settings.redis.key_prefix)
    hl = cfg.half_life_days * DAY_MS
    weights: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    newest = {e["user_id"]: max(x["ts"] for x in events if x["user_id"] == e["user_id"])
              for e in events}
    for e in events:
        w = cfg.type_weights.get(e["type"], cfg.other_weight)
        weights[e["user_id"]][e["item_id"]] += w * 0.5 ** ((newest[e["user_id"]] - e["ts"]) / hl)
    center = read_center(client, keys, version) if cfg.center_items else None
    out = {}
    for uid, per_item in weights.items():
        rows, ws = [], []
        for item, w in per_item.items():
            raw = client.get(keys.item_vec(version, item))
            if not raw:
                continue
            x = vec_from_bytes(raw).astype(np.float64)
            x /= np.linalg.norm(x)
            if center is not None:
                x = x - center
                x /= np.linalg.norm(x)
            rows.append(x)
            ws.append(w)
        if rows:
            v = np.asarray(ws) @ np.asarray(rows)
            out[uid] = v / np.linalg.norm(v)
    return out


def synthetic_events(users: int, seed: int) -> list[dict[str, Any]]:
    events = list(SyntheticStream(users=users, days=20, seed=seed, activity=0.4).events())
    for e in events:  # no ratings: the recount weighs by type only
        e.pop("rating", None)
    return events


def test_interest_vectors_equal_a_recount_and_survive_redelivery(
        infra: Settings, redis_conn: redis.Redis, unique: str, encoder: Encoder) -> None:
    settings = settings_for(infra, unique)
    create_event_topics(settings, 3)
    keys = Keys(unique)
    events = synthetic_events(30, seed=3)
    # one item without title or category: left out, counted, never a crash
    bare = {**events[0], "event_id": "bare-1", "item_id": "bare-item", "type": "purchase"}
    bare.pop("title", None)
    bare.pop("category", None)
    events.append(bare)
    ingest(settings, events)
    items_with_text = {e["item_id"] for e in events if e.get("title") or e.get("category")}
    assert redis_conn.zcard(keys.items_dirty()) == len(items_with_text)
    assert not redis_conn.exists(keys.item("bare-item"))

    worker = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    drain(worker)
    version = encoder.model_version
    assert worker.totals["item_embedded"] == len(items_with_text)
    assert worker.totals["item_no_text"] == 1
    assert all(redis_conn.exists(keys.item_vec(version, i)) for i in items_with_text)
    assert redis_conn.zcard(keys.text_due()) == 0  # text weight 0: no feature text embedded
    assert worker.totals["texts_encoded"] == 0

    expected = recount(settings, events, redis_conn, version)
    users = sorted({e["user_id"] for e in events})
    assert sorted(expected) == users
    stored = {u: redis_conn.hgetall(keys.emb(u)) for u in users}
    for uid in users:
        got = vec_from_bytes(stored[uid][b"vec"]).astype(np.float64)
        assert got.shape == (encoder.dim,)
        assert np.allclose(got, expected[uid], atol=2e-3), uid
        assert stored[uid][b"model_version"] == version.encode()
    assert int(stored[bare["user_id"]][b"interest_missing"]) == 1  # the bare item

    # Redelivery: a new consumer group reads every record again from offset 0 (skipped
    # by the offset watermarks), and a producer retry sends recent events again with
    # their ids (dropped by the event-id dedup, which covers ``dedup_ttl_s``): nothing
    # changes.
    before = {u: FeatureStore(redis_conn, settings).read_interest(u) for u in users}
    newest = max(e["ts"] for e in events)
    ingest(settings, [e for e in events if e["ts"] > newest - DAY_MS])
    IngestService(settings.model_copy(update={"ingest": settings.ingest.model_copy(
        update={"group_id": f"{unique}.again"})})).run(idle_exit_s=3)
    after = {u: FeatureStore(redis_conn, settings).read_interest(u) for u in users}
    assert after == before
    drain(worker)
    for uid in users:
        assert redis_conn.hget(keys.emb(uid), "vec") == stored[uid][b"vec"]

    # ``segstream user`` shows the views: weights, the interest view's items and age
    from segstream_services.ingest.cli import user_report

    views = user_report(settings, bare["user_id"])["views"]
    assert views["weights"] == "interest 1, text 0"
    assert views["interest"]["items_without_vector"] == 1
    assert views["interest"]["items_in_vector"] == views["interest"]["items_in_state"] - 1
    assert views["interest"]["age_s"] is not None and views["interest"]["age_s"] >= 0
    assert views["interest"]["model_version"] == encoder.model_version
    assert views["text"]["embedded_at"] is None  # text weight 0: never embedded


def test_new_item_after_the_event_is_embedded_in_the_users_batch(
        infra: Settings, redis_conn: redis.Redis, unique: str, encoder: Encoder) -> None:
    """An item without a vector yet (its queue entry lost, or a new model) is embedded in
    the user batch that needs it, so the user's vector never leaves it out."""
    settings = settings_for(infra, unique)
    settings.interest.center_items = False
    keys = Keys(unique)
    redis_conn.hset(keys.item("late"), mapping={"title": "Trail running shoes",
                                                 "category": "sports/running"})
    redis_conn.zadd(keys.interest("u1"), {"late": 2.0})
    redis_conn.zadd(keys.dirty(), {"u1": int(time.time() * 1000)})
    worker = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    report = worker.process(worker.queue.claim(10, 0, 60_000))
    assert report.outcomes["vector"] == 1 and worker.totals["item_embedded"] == 1
    vec = vec_from_bytes(redis_conn.hget(keys.emb("u1"), "vec"))
    expected = encoder.encode(["Trail running shoes. sports > running"])[0]
    assert float(vec @ expected / np.linalg.norm(vec) / np.linalg.norm(expected)) > 0.999


def test_nan_and_zero_vectors_are_rejected_with_a_reason(
        redis_conn: redis.Redis, unique: str, infra: Settings, encoder: Encoder) -> None:
    unit = np.eye(4)
    assert interest_vector({"a": 1.0, "b": 1.0}, {"a": unit[0], "b": -unit[0]})[1] == "zero"
    assert interest_vector({"a": 1.0}, {"a": np.array([np.nan, 0, 0, 0])})[1] == "nan"
    assert interest_vector({"a": 1.0}, {})[1] == "no_items"
    vec, outcome, used = interest_vector({"a": 3.0, "b": 1.0}, {"a": unit[0], "b": unit[1]})
    assert outcome == "ok" and used == 2 and vec is not None
    assert np.allclose(vec, np.array([3, 1, 0, 0]) / np.sqrt(10))
    # the combination: unit views times their weights, zeros for a missing view
    both = combine({"interest": 2 * unit[0], "text": None}, {"interest": 1.0, "text": 0.5},
                   {"interest": 4, "text": 4})
    assert both is not None and np.allclose(both, np.r_[unit[0], np.zeros(4)])
    assert combine({"interest": None}, {"interest": 1.0, "text": 0.0},
                   {"interest": 4, "text": 4}) is None

    # an item whose embedding is NaN is stored as rejected (never retried), counted
    settings = settings_for(infra, unique)
    items = ItemVectors(redis_conn, Keys(unique), settings, encoder, "w")
    bad = np.full(encoder.dim, np.nan, dtype=np.float32)
    good = encoder.encode(["Garden hose. garden > tools"])[0]
    out = items._store(["bad", "good"], np.stack([bad, good]))
    assert list(out) == ["good"] and items.counts["item_rejected_nan"] == 1
    assert redis_conn.get(Keys(unique).item_vec(encoder.model_version, "bad")) == b""
    assert items.vectors(["bad", "good"]).keys() == {"good"}


def test_text_view_is_rate_limited_and_coalesced(
        infra: Settings, redis_conn: redis.Redis, unique: str, encoder: Encoder) -> None:
    settings = settings_for(infra, unique, interest=1.0, text=0.5, text_min_interval_s=3600)
    keys = Keys(unique)
    redis_conn.hset(keys.item("i1"), mapping={"title": "Espresso machine"})
    redis_conn.zadd(keys.interest("u"), {"i1": 1.0})

    def change(text: str) -> None:
        redis_conn.set(keys.text("u"), text)
        redis_conn.zadd(keys.dirty(), {"u": int(time.time() * 1000)})

    worker = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    change("Mostly kitchen (100%). Recently: Espresso machine.")
    drain(worker)
    first = redis_conn.hgetall(keys.emb("u"))
    assert worker.totals["texts_encoded"] == 1 and b"text_vec" in first
    vec = vec_from_bytes(first[b"vec"])
    assert vec.shape == (2 * encoder.dim,)  # interest and text views, concatenated
    assert np.isclose(np.linalg.norm(vec[encoder.dim:]), 0.5, atol=2e-3)
    for n in range(3):  # three more changes within the interval: queued once, not embedded
        change(f"Mostly kitchen (100%). Recently: Espresso machine, cup {n}.")
        worker.step()
        assert worker.text_step() == 0
    due = redis_conn.zscore(keys.text_due(), "u")
    assert due is not None and due >= int(first[b"text_ms"]) + 3_600_000 - 1
    assert worker.totals["texts_encoded"] == 1
    assert redis_conn.hget(keys.emb("u"), "text_hash") == first[b"text_hash"]
    # once due, the newest text is embedded once and the vector recombined
    redis_conn.zadd(keys.text_due(), {"u": 0})
    wait_until(lambda: worker.text_step() == 1, timeout_s=30, what="the due text")
    drain(worker)
    assert worker.totals["texts_encoded"] == 2
    now = redis_conn.hgetall(keys.emb("u"))
    assert now[b"text_hash"] != first[b"text_hash"] and now[b"vec_hash"] != first[b"vec_hash"]


def test_due_texts_taken_by_a_worker_that_dies_are_embedded_by_another(
        infra: Settings, redis_conn: redis.Redis, unique: str, encoder: Encoder) -> None:
    settings = settings_for(infra, unique, interest=1.0, text=0.5, lease_s=1.0)
    keys = Keys(unique)
    text = "Mostly garden (100%). Recently: Rake."
    redis_conn.set(keys.text("u"), text)
    redis_conn.zadd(keys.text_due(), {"u": 0})
    dead = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    assert dead.text.take() == ["u"]  # ... and the worker died before writing the vector
    assert redis_conn.zscore(keys.text_due(), "u") is not None  # leased, still queued
    other = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    wait_until(lambda: other.text_step() == 1, timeout_s=30, what="the leased text, again")
    assert redis_conn.hget(keys.emb("u"), "text_hash") == text_hash(text).encode()
    assert redis_conn.zcard(keys.text_due()) == 0  # written: the lease ended


def test_text_weight_zero_never_runs_the_model_on_texts(
        infra: Settings, redis_conn: redis.Redis, unique: str, encoder: Encoder) -> None:
    settings = settings_for(infra, unique, interest=1.0, text=0.0)
    keys = Keys(unique)
    redis_conn.hset(keys.item("i1"), mapping={"title": "Board game"})
    for n in range(5):
        uid = f"u{n}-{uuid.uuid4().hex[:4]}"
        redis_conn.set(keys.text(uid), f"text {n}")
        redis_conn.zadd(keys.interest(uid), {"i1": 1.0 + n})
        redis_conn.zadd(keys.dirty(), {uid: int(time.time() * 1000)})
    worker = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    drain(worker)
    assert worker.totals["vector"] == 5 and worker.totals["texts_encoded"] == 0
    assert redis_conn.zcard(keys.text_due()) == 0


def test_items_load_queues_an_item_file_for_embedding(
        infra: Settings, redis_conn: redis.Redis, unique: str, encoder: Encoder,
        tmp_path: Any) -> None:
    from segstream.sources import Mapping
    from segstream_services.items_cli import load

    path = tmp_path / "movies.csv"
    path.write_text("movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
                    "2,,\n3,Heat (1995),Action|Crime\n", encoding="utf-8")
    settings = settings_for(infra, unique)
    keys = Keys(unique)
    assert load(settings, str(path), Mapping(columns={"item_id": "movieId",
                                                      "category": "genres"})) == (3, 2)
    assert redis_conn.hgetall(keys.item("1")) == {b"title": b"Toy Story (1995)",
                                                  b"category": b"Adventure|Animation"}
    worker = EncoderWorker(settings, encoder=encoder, client=redis_conn)
    assert worker.items.drain() == 2  # embedded before any user engages with them
    expected = encoder.encode(["Toy Story (1995). Adventure, Animation"])[0]
    stored = vec_from_bytes(redis_conn.get(keys.item_vec(encoder.model_version, "1")))
    assert float(stored @ expected) > 0.999
    assert not redis_conn.exists(keys.item_vec(encoder.model_version, "2"))
