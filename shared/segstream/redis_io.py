"""Redis client factory and key naming.

Every key segstream writes starts with ``{key_prefix}:`` and carries a Redis Cluster hash
tag where keys must live on one slot together (per user: ``{prefix}:u:{<user>}:...``).
"""

from __future__ import annotations

import redis

from segstream.config import RedisSettings
from segstream.errors import InfraError


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A Redis client from settings (ACL user, password and TLS included); bytes replies."""
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        ssl=settings.ssl,
        ssl_ca_certs=settings.ssl_ca_certs,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        health_check_interval=30,
    )


def check_redis(client: redis.Redis) -> None:
    """Raise ``InfraError`` with a one-line reason unless Redis answers PING."""
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise InfraError(f"Redis rejected the credentials: {exc}") from None
    except redis.RedisError as exc:
        raise InfraError(f"Redis is not reachable: {exc}") from None


class Keys:
    """Every Redis key name segstream uses, in one place (the contract between services).

    Per-user keys carry the user id as a Redis Cluster hash tag, so one user's keys share
    a slot and a Lua script may touch them together. Work-queue keys share the tag
    ``{<prefix>:q}`` so the claim scripts that move users between them are cluster-safe.

    - ``user(uid, "text")``   string: the user's current feature text (ingest writes)
    - ``user(uid, "emb")``    hash: vec (float16 bytes), model_version, text_hash, encoded_ms
    - ``dirty()``             zset: users whose text changed and awaits encoding
                              (member user id, score = ms when first marked; ZADD NX
                              coalesces: a user is queued once until a worker claims it)
    - ``claims()``            zset: users claimed by encoder workers (score = lease deadline
                              ms); expired claims go back to ``dirty()``
    - ``embedded()``          stream: one entry per encoded user, read by the segmenter
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def user(self, user_id: str, part: str) -> str:
        return f"{self.prefix}:u:{{{user_id}}}:{part}"

    def queue(self, name: str) -> str:
        return f"{{{self.prefix}:q}}:{name}"

    def dirty(self) -> str:
        return self.queue("dirty")

    def claims(self) -> str:
        return self.queue("claims")

    def embedded(self) -> str:
        return self.queue("embedded")

    def global_(self, name: str) -> str:
        return f"{self.prefix}:{name}"
