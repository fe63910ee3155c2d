"""``segstream forget USER``: erase one user (right to erasure).

Under the segmenter's model lock (so no segmenter batch writes the user back meanwhile):

0. finish the outbox a crashed segmenter batch may have left (``SegmentStateWriter.recover``:
   its users' writes and its records), so that replaying it later can neither write the
   user's segment back nor publish the user's change after the tombstone;
1. delete every per-user key (``Keys.user_keys``: features, dedup, titles, text, RFM,
   interest state, embeddings, segment, segment text);
2. remove the user from its segment's member set (``audience.stage_forget``), from the
   work queue (``dirty``, ``claims``, ``claim_meta``, ``text_due``) and from rollout's
   previous ids;
3. remove the user from the stored model state (the cold-start buffer, which holds its
   vector, and the recent users a refit looks at), bumping ``rev`` so every segmenter
   reloads it;

then publish a tombstone (null value) for the user on the compacted assignments topic,
so subscribers that rebuild from it drop the user. On a plain Redis 1-3 are one
MULTI/EXEC. Events of the user that arrive later create a new profile: stop the user's
events first. Records already on ``segstream.segments`` and the events topic leave with
those topics' retention.
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

import redis

from segstream.config import Settings
from segstream.errors import DataError
from segstream.kafka_client import kafka_clients
from segstream.keys import Keys
from segstream.redis_io import redis_client
from segstream.redis_scripts import is_cluster
from segstream_services.segmenter import audience, publish, store


@dataclass
class Forgotten:
    """What ``forget_user`` removed."""

    user_id: str
    keys_deleted: int
    segment_id: str | None
    model_state: bool  # the user was in the stored model state (buffer or recent users)
    tombstone_topic: str | None


def normalise_user_id(raw: str) -> str:
    """The user id as ingest stores it (NFC); raises ``DataError`` for one it never stores."""
    uid = unicodedata.normalize("NFC", raw)
    if not uid.strip() or len(uid) > 128:
        raise DataError("user id must be 1-128 characters")
    if "{" in uid or "}" in uid or not uid.isprintable():
        raise DataError("user id contains {, } or a control character")
    return uid


def _drop_from_model(client: redis.Redis, keys: Keys, user_id: str) -> bytes | None:
    """The stored model without ``user_id`` (None: the user is not in it)."""
    raw = client.hget(keys.seg_state(), "model")
    if not isinstance(raw, bytes):
        return None
    model = store.decode_model(raw)
    if user_id not in model.buffer and user_id not in model.recent:
        return None
    model.buffer.pop(user_id, None)
    model.recent.pop(user_id, None)
    return store.encode_model(model)


def forget_user(settings: Settings, user_id: str, client: redis.Redis | None = None,
                producer: Any = None) -> Forgotten:
    """Erase ``user_id`` (see the module docstring) and publish its tombstone."""
    uid = normalise_user_id(user_id)
    keys = Keys(settings.redis.key_prefix)
    own_client, own_producer = client is None, producer is None
    client = client or redis_client(settings.redis)
    producer = producer or kafka_clients(settings.kafka).producer()
    topic = settings.topics.assignments or None
    try:
        ttl = settings.segmenter.lock_ttl_s
        writer = store.SegmentStateWriter(
            client, keys, lambda t, records: publish.send_and_wait(producer, t, records, 30.0),
            settings.topics.segments, settings.topics.catalog, topic,
            settings.redis.user_ttl_s)
        with writer.lock(ttl):
            writer.recover()
            old = audience.stored_segments(client, keys, [uid])[uid]
            model = _drop_from_model(client, keys, uid)
            pipe = client.pipeline(transaction=not is_cluster(client))
            for key in keys.user_keys(uid):
                pipe.delete(key)
            audience.stage_forget(pipe, keys, uid, old)
            for queue in (keys.dirty(), keys.claims(), keys.text_due()):
                pipe.zrem(queue, uid)
            pipe.hdel(keys.claim_meta(), uid)
            pipe.hdel(keys.model_prev_ids(), uid)
            if model is not None:
                pipe.hset(keys.seg_state(), "model", model)
                pipe.hincrby(keys.seg_state(), "rev", 1)
            deleted = sum(int(n) for n in pipe.execute()[:len(keys.user_keys(uid))])
        if topic:
            audience.tombstone(producer, topic, uid)
    finally:
        if own_client:
            client.close()
        if own_producer:
            producer.close(timeout=10)
    return Forgotten(uid, deleted, old, model is not None, topic)


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    done = forget_user(settings, args.user_id)
    if args.json:
        print(json.dumps(asdict(done)))
    else:
        print(f"forgot {done.user_id}: {done.keys_deleted} keys deleted"
              f"{f', left segment {done.segment_id}' if done.segment_id else ''}"
              f"{', removed from the model state' if done.model_state else ''}"
              f"{f', tombstone on {done.tombstone_topic}' if done.tombstone_topic else ''}")
    return 0


def register(sub: Any) -> None:
    """Add ``segstream forget`` to the command line's subparsers."""
    help_ = ("Erase a user: every Redis key, its member-set entry and queue marks, and a "
             "tombstone on the assignments topic.")
    p = sub.add_parser("forget", help=help_, description=help_)
    p.add_argument("user_id", metavar="USER", help="the user id (as in the events)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_forget)
