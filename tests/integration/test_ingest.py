"""The ingest service on the real broker and Redis: exact counts, DLQ, coalescing, crashes."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest

from segstream.config import Settings
from segstream.feature_store import FeatureStore
from segstream.feature_text import render
from segstream.features import summarize
from segstream.kafka_client import kafka_clients
from segstream.redis_io import redis_client
from segstream.synthetic import MALFORMED, SyntheticStream
from segstream_services.ingest.service import IngestService
from tests.helpers import both_kafka_clients, create_event_topics, wait_until

pytestmark = pytest.mark.integration
PARTITIONS = 3


def ingest_settings(infra: Settings, unique: str, **ingest: Any) -> Settings:
    """Settings isolated to this test: own topics, consumer group and Redis key prefix."""
    return infra.model_copy(update={
        "topics": infra.topics.model_copy(update={"events": f"{unique}.events",
                                                  "dlq": f"{unique}.dlq"}),
        "redis": infra.redis.model_copy(update={"key_prefix": unique}),
        "ingest": infra.ingest.model_copy(update={"group_id": f"{unique}.ingest",
                                                  "metrics_port": 0, **ingest})})


def create_topics(settings: Settings) -> None:
    create_event_topics(settings, PARTITIONS)


def produce(settings: Settings, records: Any) -> list[Any]:
    """Send ``(key, value)`` pairs; returns each record's metadata (partition, offset)."""
    producer = kafka_clients(settings.kafka).producer(linger_ms=20)
    futures = [producer.send(settings.topics.events, key=k, value=v) for k, v in records]
    producer.flush(timeout=60)
    producer.close()
    return [f.get(timeout=30) for f in futures]


def recount(events: list[dict[str, Any]], bot_limit: int = 120) -> dict[str, dict[str, Any]]:
    """The expected features of each user, counted here without segstream's code."""
    per_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    minute_counts: Counter[tuple[str, int]] = Counter()
    for e in events:  # each user's events come in time order; the bot rule is per minute
        minute_counts[(e["user_id"], e["ts"] // 60_000)] += 1
        if minute_counts[(e["user_id"], e["ts"] // 60_000)] <= bot_limit:
            per_user[e["user_id"]].append(e)
    expected = {}
    for uid, evs in per_user.items():
        def day(ms: int) -> int:
            return datetime.fromtimestamp(ms / 1000, tz=UTC).toordinal()

        ref = day(max(e["ts"] for e in evs))
        out: dict[str, Any] = {"last_ts": max(e["ts"] for e in evs)}
        for days in (7, 30):
            window = [e for e in evs if day(e["ts"]) > ref - days]
            hours = Counter(datetime.fromtimestamp(e["ts"] / 1000, tz=UTC).hour // 6
                            for e in window)
            buys = [e for e in window if e["type"] == "purchase"]
            out[days] = {
                "types": dict(Counter(e["type"] for e in window)),
                "categories": dict(Counter(e["category"].split("/")[0] for e in window)),
                "spend_cents": sum(round(e["price"] * e["quantity"] * 100) for e in buys),
                "quantity": sum(e["quantity"] for e in buys),
                "time_of_day": [hours.get(h, 0) for h in range(4)],
                "weekend": sum(datetime.fromtimestamp(e["ts"] / 1000, tz=UTC).weekday() >= 5
                               for e in window),
                "active_days": len({day(e["ts"]) for e in window}),
            }
        titles: dict[str, int] = {}
        for e in evs:
            titles[e["title"]] = max(e["ts"], titles.get(e["title"], 0))
        newest = sorted(titles.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
        out["titles"] = tuple(t for t, _ in newest)
        expected[uid] = out
    return expected


def assert_exact(settings: Settings, expected: dict[str, dict[str, Any]]) -> None:
    store = FeatureStore(redis_client(settings.redis), settings)
    for uid, want in expected.items():
        state, text = store.read_user(uid)
        f = summarize(state, settings.ingest, max_categories=100)
        assert f.last_event_ms == want["last_ts"], uid
        for days in (7, 30):
            w = f.window(days)
            got = {"types": dict(w.types), "categories": dict(w.categories),
                   "spend_cents": round(w.spend * 100), "quantity": w.quantity,
                   "time_of_day": [n for _, n in w.time_of_day], "weekend": w.weekend,
                   "active_days": w.active_days}
            assert got == want[days], (uid, days)
        assert f.recent_titles == want["titles"], uid
        rfm = store.read_rfm(uid)  # the segmenter's RFM inputs, published beside the text
        assert rfm is not None and rfm.last_active_ms == want["last_ts"], uid
        assert (rfm.frequency, round(rfm.monetary * 100)) == \
            (sum(want[30]["types"].values()), want[30]["spend_cents"]), uid
        # the stored text is exactly the rendering of the stored state (interest first)
        assert text == render(summarize(state, settings.ingest), settings.ingest), uid
        assert "Last 30 days:" in text, uid


def sample(service: IngestService, name: str, **labels: str) -> float:
    value = service.metrics.service.registry.get_sample_value(f"segstream_{name}", labels)
    return value or 0.0


@both_kafka_clients
def test_generated_stream_gives_exact_features(kafka_infra: Settings, unique: str) -> None:
    settings = ingest_settings(kafka_infra, unique)
    create_topics(settings)
    stream = SyntheticStream(users=150, days=12, seed=21, end_ms=int(time.time() * 1000),
                             malformed=0.01, duplicates=0.03, bots=0.03)
    produce(settings, stream.records())
    service = IngestService(settings)
    stats = service.run(idle_exit_s=2)
    total = sum(stream.counts.values())
    assert stats.records == total
    assert stats.outcomes["duplicate:event_id"] == stream.counts["duplicates"] > 0
    assert stats.outcomes["cleaned:bot_rate"] > 0  # the bot users were caught
    assert sum(v for k, v in stats.outcomes.items() if k.startswith("dead_lettered")) == \
        stream.counts["malformed"]
    assert_exact(settings, recount(list(stream.events())))
    assert sample(service, "ingest_records_consumed_total") == total
    assert sample(service, "ingest_records_duplicate_total", kind="event_id") == \
        stream.counts["duplicates"]
    dirty = service.store.dirty_count()
    assert dirty == len({e["user_id"] for e in stream.events()})  # each user queued once
    assert sample(service, "ingest_dirty_users") == dirty
    text = service.metrics.service.exposition().decode()
    assert 'segstream_ingest_consumer_lag_records{partition="0"} 0.0' in text
    held = text.count("segstream_ingest_consumer_lag_records{")  # one per held partition
    assert sample(service, "ingest_assigned_partitions") == held > 0
    assert "segstream_ingest_batch_processing_seconds_count" in text
    assert "user-" not in text  # no user ids in metric labels


@both_kafka_clients
def test_every_malformed_kind_is_dead_lettered_with_its_provenance(
        kafka_infra: Settings, unique: str) -> None:
    settings = ingest_settings(kafka_infra, unique, max_age_days=400)
    create_topics(settings)
    now = int(time.time() * 1000)

    def valid(n: int, **kw: Any) -> dict[str, Any]:
        return {"event_id": f"ok-{n}", "user_id": f"user-{n % 5}", "ts": now - n * 1000,
                "type": "view", "item_id": "i", "category": "books", **kw}

    records: list[tuple[bytes, bytes | None]] = []
    expected: list[tuple[str, str]] = []
    for n, (name, (make, reason)) in enumerate(MALFORMED.items()):
        records.append((b"user-1", json.dumps(valid(2 * n)).encode()))
        records.append((b"user-1", make(valid(999))))
        expected.append((name, reason))
        records.append((b"user-2", json.dumps(valid(2 * n + 1)).encode()))
    cleaned = [valid(500, price=5e7, type="purchase"), valid(501, quantity=10**6),
               valid(502, ts=now + 86_400_000), valid(503, ts=now - 500 * 86_400_000)]
    records += [(b"user-3", json.dumps(e).encode()) for e in cleaned]
    meta = produce(settings, records)

    service = IngestService(settings)
    stats = service.run(idle_exit_s=2)  # returning normally: it never died on data
    assert stats.outcomes["applied"] == 2 * len(MALFORMED)
    assert stats.outcomes["cleaned:absurd_value"] == 2
    assert stats.outcomes["cleaned:future"] == 1 and stats.outcomes["cleaned:too_old"] == 1

    consumer = kafka_clients(settings.kafka).consumer(settings.topics.dlq, group_id=None)
    letters: list[Any] = []
    try:
        def drain() -> bool:
            letters.extend(consumer.poll(500, 500))
            return len(letters) >= len(MALFORMED)
        wait_until(drain, timeout_s=30, interval_s=0, what="dead letters")
    finally:
        consumer.close()
    assert len(letters) == len(MALFORMED) >= 30
    sources = {(m.partition, m.offset): records[i] for i, m in enumerate(meta)}
    for letter, (name, reason) in zip(letters, expected, strict=True):
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers["segstream.reason"] == reason, name
        assert headers["segstream.source.topic"] == settings.topics.events
        source = (int(headers["segstream.source.partition"]),
                  int(headers["segstream.source.offset"]))
        assert sources[source][1] == letter.value, name  # the original bytes, unchanged
        assert headers["segstream.detail"]
    for reason in {r for _, r in expected}:
        assert sample(service, "ingest_records_dead_lettered_total", reason=reason) == \
            sum(1 for _, r in expected if r == reason)


def test_coalescing_one_mark_until_claimed_and_only_on_change(infra: Settings,
                                                              unique: str) -> None:
    settings = ingest_settings(infra, unique)
    create_topics(settings)
    now = int(time.time() * 1000)

    def burst(first: int, n: int, kind: str = "view") -> list[tuple[bytes, bytes]]:
        return [(b"solo", json.dumps({"event_id": f"s{i}", "user_id": "solo",
                                       "ts": now - 3_600_000 + i * 1000, "type": kind,
                                       "item_id": "i", "category": "music"}).encode())
                for i in range(first, first + n)]

    produce(settings, burst(0, 60))
    service = IngestService(settings)
    service.run(idle_exit_s=1.5)
    client = service.redis
    dirty = FeatureStore(client, settings).keys.dirty()
    assert client.zrange(dirty, 0, -1) == [b"solo"]
    first_score = client.zscore(dirty, "solo")

    produce(settings, burst(60, 40, "purchase"))  # text changes while still queued
    service = IngestService(settings)
    service.run(idle_exit_s=1.5)
    assert client.zscore(dirty, "solo") == first_score  # NX: still one entry, same age
    text = client.get(FeatureStore(client, settings).keys.text("solo")).decode()
    assert "purchases" in text

    client.zrem(dirty, "solo")  # the encoder claims it
    produce(settings, burst(0, 100))  # the same events again (new offsets): no change
    service = IngestService(settings)
    stats = service.run(idle_exit_s=1.5)
    assert stats.outcomes["duplicate:event_id"] == 100
    assert client.zcard(dirty) == 0  # unchanged text: not queued again

    produce(settings, burst(100, 50, "like"))
    service = IngestService(settings)
    service.run(idle_exit_s=1.5)
    assert client.zrange(dirty, 0, -1) == [b"solo"]  # changed again: queued again


def test_crash_between_redis_apply_and_texts_loses_nothing(infra: Settings,
                                                           unique: str) -> None:
    settings = ingest_settings(infra, unique)
    create_topics(settings)
    stream = SyntheticStream(users=40, days=5, seed=8, end_ms=int(time.time() * 1000))
    produce(settings, stream.records())
    crashing = IngestService(settings)

    def crash(*_args: Any) -> int:
        raise RuntimeError("simulated crash after step 2")

    crashing.store.store_texts = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.run(idle_exit_s=2)
    store = FeatureStore(redis_client(settings.redis), settings)
    assert store.dirty_count() == 0  # state applied, texts and marks lost, nothing committed

    stats = IngestService(settings).run(idle_exit_s=2)
    assert stats.outcomes["duplicate:redelivery"] > 0  # the first batch came back, skipped
    assert_exact(settings, recount(list(stream.events())))
    assert store.dirty_count() == len({e["user_id"] for e in stream.events()})


def test_cli_replay_produce_and_user(infra: Settings, unique: str, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    settings = ingest_settings(infra, unique)
    create_topics(settings)
    env = {**os.environ, "SEGSTREAM_TOPICS__EVENTS": settings.topics.events,
           "SEGSTREAM_TOPICS__DLQ": settings.topics.dlq,
           "SEGSTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "segstream_services.cli", *args],
                              capture_output=True, text=True, env=env, timeout=120,
                              cwd=tmp_path)

    now = datetime.fromtimestamp(time.time() - 86_400, tz=UTC)  # yesterday: none in the future
    rows = ["Invoice,Sku,Description,Qty,When,Price,Customer"]
    for i in range(30):
        rows.append(f"{i},SKU{i % 4},Lamp model {i % 4},{1 + i % 3},"
                    f"{now.strftime('%m/%d/%Y')} {i % 24}:{i % 60:02d},{4.5 + i},C{i % 3}")
    (tmp_path / "retail.csv").write_text("\n".join(rows) + "\n")
    done = cli("replay", "retail.csv", "--map", "user_id=Customer,ts=When,item_id=Sku,"
               "title=Description,price=Price,quantity=Qty", "--set", "type=purchase,"
               "category=home/lighting", "--ts-format", "%m/%d/%Y %H:%M", "--rate", "500")
    assert done.returncode == 0, done.stderr
    assert "replayed 30 of 30 rows" in done.stdout
    done = cli("produce", "--synthetic", "--users", "20", "--days", "2", "--seed", "4",
               "--malformed", "0.05")
    assert done.returncode == 0, done.stderr
    truth = json.loads((tmp_path / "synthetic-seed4-users20.truth.json").read_text())
    assert len(truth["users"]) == 20

    stats = IngestService(settings).run(idle_exit_s=2)
    assert stats.outcomes["applied"] > 30
    done = cli("user", "C1", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["profile"]["feature_text"].startswith("Mostly home (100%).")
    assert "Last 30 days: 6-10 events" in report["profile"]["feature_text"]
    assert report["profile"]["text_is_current"] is True
    assert report["features"]["last_30_days"]["types"] == {"purchase": 10}
    assert report["features"]["last_30_days"]["categories"] == {"home": 10}
    table = cli("user", "C1")
    assert table.returncode == 0 and "feature_text" in table.stdout
    missing = cli("user", "nobody")
    assert missing.returncode == 1 and missing.stderr.strip() == \
        "segstream: no data for user 'nobody'"
    bad = cli("replay", "nope.csv")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_a_second_consumer_joining_mid_stream_shares_the_partitions_exactly(
        infra: Settings, unique: str) -> None:
    """A second member joins while the first is consuming: it takes partitions over and
    every event is counted exactly once across the rebalance (the redelivered records are
    skipped by their offset watermarks). Whether a batch was in flight at the moment of
    the revocation is not observed here."""
    import threading

    settings = ingest_settings(infra, unique, max_poll_records=20)
    create_topics(settings)
    stream = SyntheticStream(users=250, days=10, seed=31, end_ms=int(time.time() * 1000),
                             duplicates=0.02)
    produce(settings, stream.records())
    total = sum(stream.counts.values())
    services = [IngestService(settings), IngestService(settings)]
    stats: list[Any] = [None, None]
    store_texts = services[0].store.store_texts

    def slow_store_texts(*args: Any) -> int:
        time.sleep(0.02)  # a slow first member: the stream lasts
        return store_texts(*args)

    services[0].store.store_texts = slow_store_texts  # type: ignore[method-assign]

    def work(i: int) -> None:
        stats[i] = services[i].run(idle_exit_s=4)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    threads[0].start()
    wait_until(lambda: sample(services[0], "ingest_records_consumed_total") > 0, timeout_s=60,
               what="the first member at work")
    threads[1].start()
    for t in threads:
        t.join(timeout=240)
    assert all(s is not None for s in stats)
    assert stats[1].records > 0  # the newcomer got partitions mid-stream ...
    assert stats[0].records < total  # ... that the first member gave away
    assert stats[0].records + stats[1].records >= total
    assert_exact(settings, recount(list(stream.events())))
