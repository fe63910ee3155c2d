"""Lua script calls pipelined in one round trip, on a plain Redis or a Redis Cluster client.

redis-py's ``Script(..., client=pipe)`` loads the script before a plain pipeline runs,
but a cluster pipeline refuses ``evalsha`` outright. ``ScriptCalls`` queues ``EVALSHA``
on a cluster pipeline instead (which routes each call by the slot of its keys and
refuses keys in different slots); the calls a node answers ``NOSCRIPT`` (first use, or a
node restarted or failed over since; such a call did not run) are sent again once the
scripts are loaded on every primary, so nothing runs twice.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError


def is_cluster(client: Any) -> bool:
    """True for a ``redis.cluster.RedisCluster`` (or one of its pipelines)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


class ScriptCalls:
    """Script calls queued with ``add`` and sent together by ``execute``."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.cluster = is_cluster(client)
        self.pipe = client.pipeline(transaction=False)
        self.calls: list[tuple[Script, list[Any]]] = []

    def add(self, script: Script, keys: list[str], args: list[Any]) -> None:
        """Queue one call of ``script``."""
        if self.cluster:
            command = ["EVALSHA", script.sha, len(keys), *keys, *args]
            self.calls.append((script, command))
            self.pipe.execute_command(*command)
        else:
            script(keys=keys, args=args, client=self.pipe)

    def execute(self) -> list[Any]:
        """Send the calls and return their replies in order; an error reply raises."""
        if not self.cluster:
            return list(self.pipe.execute())
        replies = list(self.pipe.execute(raise_on_error=False))
        redo = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if redo:
            for script in {id(s): s for s, _ in (self.calls[i] for i in redo)}.values():
                self.client.script_load(script.script)  # a cluster loads it on every primary
            for i in redo:
                self.pipe.execute_command(*self.calls[i][1])
            for i, reply in zip(redo, self.pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        self.calls = []
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies
