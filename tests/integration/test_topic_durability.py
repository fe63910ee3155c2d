"""Topic durability comes from settings: ``topics.replication_factor`` and
``topics.min_insync_replicas`` reach the broker when topics are created (the local broker
has one node, so 1/1 works there and 3 is refused by the broker)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segstream.config import Settings, load_settings
from segstream.errors import ConfigError
from segstream.kafka_client import KafkaClientError, kafka_clients
from segstream.kafka_io import describe, ensure_topics, topic_specs
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
JOB = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "topics-job.yaml"


def _topics(infra: Settings, unique: str, **durability: int) -> Settings:
    names = {n: f"{unique}.{n}" for n in ("events", "segments", "dlq", "catalog",
                                          "assignments")}
    return infra.model_copy(update={"topics": infra.topics.model_copy(
        update={**names, "events_partitions": 2, "segments_partitions": 2, **durability})})


def test_topics_are_created_with_the_configured_replication(infra: Settings,
                                                            unique: str) -> None:
    settings = _topics(infra, unique, replication_factor=1, min_insync_replicas=1)
    specs = topic_specs(settings.topics)
    assert {s.replication for s in specs} == {1}
    admin = kafka_clients(settings.kafka).admin()
    try:
        assert sorted(ensure_topics(admin, specs)) == sorted(s.name for s in specs)
        names = [s.name for s in specs]

        def described() -> dict[str, dict[str, str]] | None:
            found = describe(admin, names)
            return found if len(found) == len(names) else None

        found = wait_until(described, what="topic metadata")
        assert {name: meta["replication"] for name, meta in found.items()} == \
            dict.fromkeys(names, "1")
        assert {name: meta.get("min.insync.replicas") for name, meta in found.items()} == \
            dict.fromkeys(names, "1")
    finally:
        admin.close()


def test_a_replication_factor_above_the_cluster_size_reaches_the_broker(
        infra: Settings, unique: str) -> None:
    settings = _topics(infra, unique, replication_factor=3, min_insync_replicas=2)
    specs = topic_specs(settings.topics)
    assert {s.replication for s in specs} == {3}
    assert {s.configs["min.insync.replicas"] for s in specs} == {"2"}
    admin = kafka_clients(settings.kafka).admin()
    try:  # one local broker: the broker itself refuses three replicas
        with pytest.raises(KafkaClientError, match=r"(?i)invalid.?replication.?factor"):
            ensure_topics(admin, specs[:1])
    finally:
        admin.close()


def test_min_insync_above_the_replication_factor_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGSTREAM_TOPICS__REPLICATION_FACTOR", "2")
    monkeypatch.setenv("SEGSTREAM_TOPICS__MIN_INSYNC_REPLICAS", "3")
    with pytest.raises(ConfigError, match="min_insync_replicas"):
        load_settings()


def test_the_k8s_topics_job_sets_production_durability(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    job = yaml.safe_load(JOB.read_text())
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]
           ["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    specs = topic_specs(load_settings().topics)
    assert {s.replication for s in specs} == {3}
    assert {s.configs["min.insync.replicas"] for s in specs} == {"2"}
