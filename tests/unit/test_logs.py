"""Logging set-up: a Kafka client library's repeated message is held back, ours never."""

from __future__ import annotations

import logging

import pytest

from segstream import logs


def test_a_kafka_library_message_repeated_passes_once_per_interval(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, kafka_log = logging.getLogger(), logging.getLogger("kafka")
    handlers, levels = root.handlers[:], (root.level, kafka_log.level)
    clock = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    try:
        logs.configure_logging("INFO")
        lib, ours = logging.getLogger("kafka.cluster"), logging.getLogger("segstream.test")
        for _ in range(50):
            lib.error("Topic %s not found in cluster metadata", "events")
            ours.warning("our own warning")
        clock[0] += logs.REPEAT_INTERVAL_S
        lib.error("Topic %s not found in cluster metadata", "events")
        err = capsys.readouterr().err.splitlines()
    finally:
        root.handlers[:] = handlers
        root.setLevel(levels[0])
        kafka_log.setLevel(levels[1])
    library = [line for line in err if "kafka.cluster" in line]
    assert len(library) == 2  # the first, then one line for the next interval
    assert library[1].endswith("Topic events not found in cluster metadata "
                               "(49 more like it in the last 30s)")
    assert sum("our own warning" in line for line in err) == 50
