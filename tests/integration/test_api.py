"""``segstream serve`` as a process, called over HTTP, against the real Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import redis

from segstream.config import Settings
from tests.helpers import delete_prefix, wait_until
from tests.integration.segment_state import write_state

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token-for-the-api-test"
MEMBERS = 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A ``segstream serve`` child process and an HTTP client for it."""

    def __init__(self, settings: Settings, prefix: str, token: str | None) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSTREAM_")}
        env.update(SEGSTREAM_REDIS__KEY_PREFIX=prefix, SEGSTREAM_LOG_LEVEL="DEBUG",
                   SEGSTREAM_REDIS__HOST=settings.redis.host,
                   SEGSTREAM_REDIS__PORT=str(settings.redis.port))
        if token:
            env["SEGSTREAM_API__TOKEN"] = token
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segstream_services.cli", "serve", "--port", str(self.port),
             "--access-log"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        wait_until(self._up, 60, 0.2, what="segstream serve to answer /healthz")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            out = self.proc.stdout.read().decode() if self.proc.stdout else ""
            raise AssertionError(f"segstream serve exited: {out[-2000:]}")
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> str:
        """Stop the server; returns everything it printed."""
        self.http.close()
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=20)
        return out.decode()


@pytest.fixture
def state(redis_conn: redis.Redis, unique: str) -> Iterator[dict[str, list[str]]]:
    members = {"s1": [f"user-{i:05d}" for i in range(MEMBERS)], "s2": ["x1", "x2", "ü-3"]}
    write_state(redis_conn, unique, members)
    yield members
    delete_prefix(redis_conn, unique)


@pytest.fixture
def open_api(infra: Settings, unique: str, state: dict[str, list[str]]) -> Iterator[Server]:
    server = Server(infra, unique, token=None)
    yield server
    server.stop()


def test_users_segments_and_errors_without_auth(open_api: Server) -> None:
    http = open_api.http
    got = http.get("/v1/users/user-00042")
    assert got.status_code == 200
    body = got.json()
    assert body["segment_id"] == "s1" and body["tier_path"] == ["f1", "s1"]
    assert body["label"] == "guitars / amps" and body["tier_labels"][0] == "music and coffee"
    assert body["confidence"] == pytest.approx(0.8)
    assert body["memberships"][0] == {"segment_id": "s1", "weight": 0.8}
    assert body["engagement_tier"] == "active" and body["model_version"] == "test-model@1"
    assert body["updated_at"]

    missing = http.get("/v1/users/nobody-here")
    assert missing.status_code == 404 and "nobody-here" in missing.json()["detail"]
    for bad, why in (("x" * 129, "longer than 128"), ("a%00b", "control characters")):
        resp = http.get(f"/v1/users/{bad}")
        assert resp.status_code == 400, bad
        assert why in resp.json()["detail"] and "\n" not in resp.json()["detail"]

    batch = http.post("/v1/users:batchGet", json={"user_ids": ["x2", "nobody", "user-00001"]})
    assert batch.status_code == 200
    assert [u["user_id"] for u in batch.json()["users"]] == ["x2", "user-00001"]
    assert batch.json()["missing"] == ["nobody"]
    assert http.post("/v1/users:batchGet", json={"ids": []}).status_code == 400
    assert http.post("/v1/users:batchGet", json={"user_ids": [""]}).status_code == 400

    segments = http.get("/v1/segments").json()["segments"]
    assert [s["segment_id"] for s in segments] == ["f1", "s1", "s2"]
    assert {s["segment_id"]: s["members"] for s in segments} == {
        "f1": MEMBERS + 3, "s1": MEMBERS, "s2": 3}
    one = http.get("/v1/segments/s2").json()
    assert one["label"] == "espresso / grinders" and one["description"]
    assert one["lineage"]["origin"] == "cold-start" and one["size"] == 10
    assert http.get("/v1/segments/s99").status_code == 404
    assert http.get("/v1/segments/nope").status_code == 400
    assert http.get("/v1/segments/s99/members").status_code == 404
    assert http.get("/v1/segments/f1/members").status_code == 400
    bad_cursor = http.get("/v1/segments/s1/members", params={"cursor": "!!"})
    assert bad_cursor.status_code == 400 and "cursor" in bad_cursor.json()["detail"]

    spec = http.get("/openapi.json").json()
    assert {"/v1/users/{user_id}", "/v1/users:batchGet", "/v1/segments",
            "/v1/segments/{segment_id}", "/v1/segments/{segment_id}/members"} <= set(
        spec["paths"])

    metrics = http.get("/metrics").text
    assert 'segstream_api_request_seconds_count{route="/v1/users/{user_id}",status="2xx"}' \
        in metrics
    assert 'route="/v1/users/{user_id}",status="4xx"' in metrics
    assert "user-00042" not in metrics and "nobody-here" not in metrics


def test_members_paginate_without_duplicates_or_gaps(open_api: Server,
                                                     state: dict[str, list[str]]) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 997, **({"cursor": cursor} if cursor else {})}
        page = open_api.http.get("/v1/segments/s1/members", params=params).json()
        assert len(page["members"]) <= 997
        seen += page["members"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == -(-MEMBERS // 997)
    assert len(seen) == len(set(seen)) == MEMBERS
    assert seen == sorted(state["s1"])  # every member once, in byte order


def test_bearer_token_required_when_configured_and_never_printed(
        infra: Settings, unique: str, state: dict[str, list[str]]) -> None:
    server = Server(infra, unique, token=TOKEN)
    try:
        http = server.http
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            resp = http.get("/v1/users/x1", headers=headers)
            assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert http.get("/v1/users/x1", headers=ok).json()["segment_id"] == "s2"
        assert http.get("/v1/segments/s1/members", headers=ok).status_code == 200
        assert http.post("/v1/users:batchGet", json={"user_ids": ["x1"]}).status_code == 401
        assert http.get("/metrics").status_code == 200  # scrapes need no token
        schemes = http.get("/openapi.json").json()["components"]["securitySchemes"]
        assert any(s.get("scheme") == "bearer" for s in schemes.values())
    finally:
        printed = server.stop()
    assert "GET /v1/users/x1" in printed  # the access log ran, at DEBUG
    assert TOKEN not in printed
