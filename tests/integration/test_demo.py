"""The README's main command, end to end: `segstream demo` on a small synthetic run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from segstream.config import Settings
from segstream.kafka_client import kafka_clients

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_cleans_up(infra: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "segstream_services.cli", "demo", "--users", "120",
         "--settle", "5", "--max-seconds", "400"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "segstream demo: final segments" in out
    ari = re.search(r"adjusted Rand index vs the 8 personas: ([0-9.]+) over (\d+) users", out)
    assert ari, out[-1500:]
    assert float(ari.group(1)) >= 0.6 and int(ari.group(2)) >= 100
    assert re.search(r"freshness .* p50 [0-9.]+s, p99 [0-9.]+s", out.replace("\n", " "))
    # the interest path: items embedded once each, users' vectors without a transformer pass
    views = re.search(r"views: interest [0-9.]+ \+ feature text [0-9.]+; ([0-9,]+) items "
                      r"embedded", out.replace("\n", " "))
    assert views and int(views.group(1).replace(",", "")) > 0, out[-1500:]
    run = re.search(r"logs: \S+/(demo-[0-9-]+)", out)
    assert run, out[:1500]
    admin = kafka_clients(infra.kafka).admin()
    try:
        leftovers = [t for t in admin.list_topics() if run.group(1) in t]
    finally:
        admin.close()
    assert leftovers == []  # the run's topics are deleted
    shown = subprocess.run(  # the run's Redis state stays: `segstream user` reads it
        [sys.executable, "-m", "segstream_services.cli", "user", "user-000001", "--json"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "SEGSTREAM_REDIS__KEY_PREFIX": run.group(1)})
    assert shown.returncode == 0, shown.stderr
    user = json.loads(shown.stdout)
    assert user["profile"]["feature_text"]
    assert user["views"]["interest"]["items_in_vector"] > 0
    segment = user["segment"]
    assert segment["segment_id"] == segment["tier_path"][-1]
    assert 0 < segment["confidence"] <= 1 and segment["memberships"]
    pids = [int(p) for p in re.findall(r"\(pid (\d+),", out.replace("\n", " "))]
    assert len(pids) == 3  # ingest, encoder, segmenter
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()
                and "segstream" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
