"""``segstream run ingest`` killed with SIGKILL mid-stream, restarted: counts stay exact.

Also: SIGTERM finishes the batch in hand, commits and exits 0.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from segstream.config import Settings
from segstream.kafka_client import TopicPartition, kafka_clients
from segstream.synthetic import SyntheticStream
from tests.helpers import wait_until
from tests.integration.test_ingest import (
    assert_exact,
    create_topics,
    ingest_settings,
    produce,
    recount,
)

pytestmark = pytest.mark.integration
KILLS = 5


def start(settings: Settings, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ,
           "SEGSTREAM_TOPICS__EVENTS": settings.topics.events,
           "SEGSTREAM_TOPICS__DLQ": settings.topics.dlq,
           "SEGSTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix,
           "SEGSTREAM_INGEST__GROUP_ID": settings.ingest.group_id,
           "SEGSTREAM_INGEST__METRICS_PORT": "0",
           "SEGSTREAM_INGEST__MAX_POLL_RECORDS": str(settings.ingest.max_poll_records),
           "SEGSTREAM_INGEST__SESSION_TIMEOUT_MS": "6000",
           "SEGSTREAM_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "segstream_services.cli", "run", "ingest",
                             *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def committed(settings: Settings, partitions: int) -> int:
    # a consumer of the group that never subscribes reads its offsets without joining
    reader = kafka_clients(settings.kafka).consumer(group_id=settings.ingest.group_id)
    try:
        return sum(reader.committed(TopicPartition(settings.topics.events, p)) or 0
                   for p in range(partitions))
    finally:
        reader.close()


def test_sigkill_at_random_points_then_sigterm(infra: Settings, unique: str) -> None:
    settings = ingest_settings(infra, unique, max_poll_records=40)
    create_topics(settings)
    stream = SyntheticStream(users=300, days=14, seed=99, end_ms=int(time.time() * 1000),
                             duplicates=0.02, malformed=0.005, bots=0.01)
    meta = produce(settings, stream.records())
    total = len(meta)
    partitions = 1 + max(m.partition for m in meta)
    rng = random.Random(2024)
    progress = [0]
    for _ in range(KILLS):
        proc = start(settings)
        try:
            before = progress[-1]
            # wait for this process to commit something, then kill it at a random moment
            wait_until(lambda b=before: committed(settings, partitions) > b, timeout_s=60,
                       interval_s=0.1, what="progress before the kill")
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        progress.append(committed(settings, partitions))
    assert progress[-1] < total, "every kill must land mid-stream"
    assert progress == sorted(progress) and len(set(progress)) == KILLS + 1

    proc = start(settings)
    try:
        wait_until(lambda: committed(settings, partitions) == total, timeout_s=120,
                   interval_s=0.2, what="the rest of the stream")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr
    assert_exact(settings, recount(list(stream.events())))
