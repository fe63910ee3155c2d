"""Test helpers shared by unit and integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float = 30.0, interval_s: float = 0.05,
               what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def create_event_topics(settings: Any, partitions: int) -> None:
    """Create ``settings.topics.events`` (``partitions``) and its DLQ (1), and wait until
    both show in metadata."""
    from kafka.admin import NewTopic

    from segstream.kafka_io import KafkaClients, describe

    admin = KafkaClients(settings.kafka).admin()
    try:
        names = [settings.topics.events, settings.topics.dlq]
        admin.create_topics([NewTopic(settings.topics.events, partitions, 1),
                             NewTopic(settings.topics.dlq, 1, 1)])
        wait_until(lambda: len(describe(admin, names)) == 2, what="topics")
    finally:
        admin.close()
