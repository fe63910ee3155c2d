"""Redis client factory and check. Key names are in ``segstream.keys`` (``Keys`` is
re-exported here for existing imports)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from segstream.config import RedisSettings
from segstream.errors import ConfigError, InfraError
from segstream.keys import Keys

__all__ = ["Keys", "check_redis", "decode_fields", "hash_fields", "redis_client"]


def decode_fields(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash as ``HGETALL`` returns it (bytes replies) with text keys and values."""
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v) for k, v in raw.items()}


def hash_fields(fields: Mapping[str, EncodableT]) -> dict[FieldT, EncodableT]:
    """``fields`` as the ``mapping`` of ``HSET`` (a copy typed the way redis-py wants it)."""
    return dict(fields.items())


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A Redis client from settings (ACL user, password and TLS included); bytes replies.

    With ``settings.cluster`` it is a ``redis.cluster.RedisCluster`` (same command API;
    ``host:port`` is any node, the others are discovered): it routes each command by the
    slot of its keys, splits pipelines by slot and refuses multi-key commands and scripts
    whose keys span slots (``segstream.keys`` puts keys used together under one hash tag).
    """
    common: dict[str, Any] = {
        "username": settings.username,
        "password": settings.password.get_secret_value() if settings.password else None,
        "ssl": settings.ssl,
        "ssl_ca_certs": settings.ssl_ca_certs,
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "health_check_interval": 30,
    }
    if settings.cluster:
        if settings.db:
            raise ConfigError("redis.db must be 0 with redis.cluster (Cluster has one db)")
        from redis.cluster import RedisCluster

        return cast(redis.Redis, RedisCluster(host=settings.host, port=settings.port,
                                              **common))
    return redis.Redis(host=settings.host, port=settings.port, db=settings.db, **common)


def check_redis(client: redis.Redis) -> None:
    """Raise ``InfraError`` with a one-line reason unless Redis answers PING."""
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise InfraError(f"Redis rejected the credentials: {exc}") from None
    except redis.RedisError as exc:
        raise InfraError(f"Redis is not reachable: {exc}") from None
