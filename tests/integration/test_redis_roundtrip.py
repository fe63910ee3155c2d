"""A Redis round trip through the project's client factory and key layout."""

from __future__ import annotations

import pytest
import redis

from segstream.config import Settings
from segstream.errors import InfraError
from segstream.redis_io import Keys, check_redis, redis_client

pytestmark = pytest.mark.integration


def test_round_trip_under_a_unique_prefix(redis_conn: redis.Redis, unique: str) -> None:
    keys = Keys(unique)
    text_key = keys.text("user-1")
    payload = "Last 30 days: 41 views, 3 purchases. 消费金额1000元以上.".encode()
    try:
        redis_conn.set(text_key, payload)
        redis_conn.zadd(keys.dirty(), {"user-1": 1}, nx=True)
        redis_conn.zadd(keys.dirty(), {"user-1": 2}, nx=True)  # coalesced: still score 1
        assert redis_conn.get(text_key) == payload
        assert redis_conn.zrange(keys.dirty(), 0, -1, withscores=True) == [(b"user-1", 1.0)]
    finally:
        redis_conn.delete(text_key, keys.dirty())
    assert redis_conn.exists(text_key) == 0


def test_keys_share_hash_slots_where_scripts_need_them() -> None:
    keys = Keys("ss")
    assert keys.text("u:1") == "ss:u:{u:1}:text"
    assert keys.dirty().startswith("{ss:q}") and keys.claims().startswith("{ss:q}")


def test_wrong_port_gives_a_clear_error(infra: Settings) -> None:
    cfg = infra.redis.model_copy(update={"port": 1, "socket_timeout_s": 1.0})
    with pytest.raises(InfraError, match="not reachable"):
        check_redis(redis_client(cfg))
