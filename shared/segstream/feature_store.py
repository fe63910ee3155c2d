"""Per-user feature state in Redis: atomic, idempotent updates and the dirty queue.

Key layout (``segstream.keys.Keys``; all of one user's keys share the ``{uid}`` hash tag,
so the Lua script (``feature_script.APPLY_LUA``) touches one Redis Cluster slot):

- ``features(uid)``       hash, the bucket map of ``features``: field ``<group>:<day>`` ->
  ``"sub=n;sub=n"`` (a few dozen short fields, so Redis keeps it as a compact listpack),
  plus meta fields ``_last`` (newest event ms), ``_dx`` (newest day), ``_rm``/``_rn``
  (event-time minute and count for the bot rule), ``_v`` (the state version: calls that
  applied an event; the text and RFM are written only from the current version) and
  ``_o:<topic crc>:<partition>``
  (highest Kafka offset applied from that partition for this user; "topic" is what the
  caller passes, ingest passes the topic's id, so a recreated topic starts afresh)
- ``dedup(uid)``          zset, dedup: 8-byte BLAKE2 digests of event ids, score = event
  ms; trimmed to ``dedup_ttl_s`` before the newest event and ``dedup_max_per_user``
- ``titles(uid)``         zset, last distinct titles, score = newest event ms with it
- ``text(uid)``           string, the feature text
- ``rfm(uid)``            hash, the user's RFM inputs (``features.Rfm`` fields): the one
  part of a profile the segmenter reads, so the bucket map above stays private to ingest
- ``interest(uid)``       zset, the user's interest state: item → anchored weight
  ``Σ w · 2^((t − anchor) / half_life)`` over the user's applied events of that item
  (``w`` = ``interest.event_weight``; ``anchor`` = the user's first such event time, in
  the feature hash's ``_ia``). The interest vector's direction ``Σ weight_i · x_i`` does
  not depend on "now", so nothing is ever rescaled for time passing; an event before
  the anchor simply weighs less. When ``(t − anchor)`` passes 60 half-lives the state is
  re-anchored (every weight multiplied by ``2^-(t − anchor)/half_life``, exact up to
  float rounding; weights that underflow to 0 are dropped). At most
  ``interest.max_items`` items are kept: past that, the items with the smallest anchored
  weight are dropped (the one approximation: a dropped item's past weight is lost, and
  it weighs less than every kept item)
- ``dirty()``             zset, the encoder's queue: ``ZADD NX`` user, score = now ms
- ``item(i)``, ``items_dirty()``: an item's title and category, written (``HSETNX``,
  first text seen wins) the first time this process sees the item with a text, and the
  item queued for embedding (``ZADD NX``); item keys live on their own slots, so this is
  a separate pipelined command before the users' dirty marks, never inside a user's script

Exactly-once effect: a Kafka record redelivered after a crash or rebalance has an offset
at or below its user's ``_o`` watermark for that partition and is skipped (``R``) however
old it is; a record whose event id was already seen (a producer retry, a replayed file)
is skipped by the dedup set (``D``). Both checks and all increments of one user happen in
one script call, so a crash never leaves half an update.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import redis

from segstream import redis_scripts
from segstream.config import Settings
from segstream.feature_hash import dedup_member, parse_state, split_pairs, watermark_field
from segstream.feature_script import APPLY_LUA, WRITE_LUA
from segstream.features import Increment, Rfm, UserState
from segstream.keys import Keys

SEEN_ITEMS = 100_000  # items a process remembers having registered
KEYS_CACHED = 100_000  # users whose script KEYS a store keeps (rebuilt when full)
_PAYLOAD = msgspec.json.Encoder()  # UTF-8 JSON, non-ASCII text kept as is

@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~4x more to build
class PendingEvent:
    """One valid event on its way into Redis, with its Kafka position (offset -1: none)."""

    event_id: str
    inc: Increment
    topic: str = ""
    partition: int = -1
    offset: int = -1
    item_id: str = ""
    weight: float = 0.0  # the event's weight in the user's interest state (0: none)


@dataclass
class UserResult:
    """What one user's script call did and left behind."""

    statuses: str                 # one letter per event, see APPLY_LUA
    state: UserState              # read-only: its buckets are shared (``parse_state``)
    text: str | None              # the stored feature text before this batch's render
    version: str = "*"            # the state's version (``_v``) that ``state`` shows


@dataclass
class InFlight:
    """Script calls sent by ``FeatureStore.send_apply`` whose replies are still unread."""

    users: list[str]
    by_user: dict[str, list[PendingEvent]]
    conn: Any


def _bulk(value: str | int | bytes) -> bytes:
    """One RESP bulk string (what redis-py's packer writes for the same argument)."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class FeatureStore:
    """Applies event increments to Redis and keeps feature texts and the dirty queue."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.cfg = settings.ingest
        self.keys = Keys(settings.redis.key_prefix)
        self._apply = client.register_script(APPLY_LUA)
        self._write = client.register_script(WRITE_LUA)
        self._loaded = False
        self._half_life_ms = int(settings.interest.half_life_days * 86_400_000)
        # max_items 0: no online interest state, so no item ids, weights or item texts
        self._interest = settings.interest.max_items > 0
        cfg = self.cfg
        self._head: list[str | int] = [  # ARGV 1-7, the same for every call
            max(cfg.windows_days), cfg.max_categories_per_day,
            cfg.bot_max_events_per_minute, cfg.max_titles, cfg.dedup_ttl_s * 1000,
            cfg.dedup_max_per_user, settings.redis.user_ttl_s]
        self._tail: list[str | int] = [self._half_life_ms, settings.interest.max_items]
        self._packed_tail = b"".join(_bulk(a) for a in self._tail)
        self._user_keys: dict[str, list[str]] = {}
        self._packed_keys: dict[str, bytes] = {}  # a user's EVALSHA head, RESP-encoded
        self._new_items: dict[str, tuple[str, str]] = {}
        self._seen_items: OrderedDict[str, None] = OrderedDict()
        self._epoch: bytes | None = None  # the state epoch id Redis had at the last write

    def user_keys(self, user_id: str) -> list[str]:
        """The script's KEYS: its five keys, then the user's other keys (``Keys.user_keys``),
        whose TTL an applied event refreshes (the user is active). Kept per user (the
        same list every batch: treat it as read-only)."""
        found = self._user_keys.get(user_id)
        if found is None:
            if len(self._user_keys) >= KEYS_CACHED:
                self._user_keys.clear()
            k = self.keys
            own = [k.features(user_id), k.dedup(user_id), k.titles(user_id), k.text(user_id),
                   k.interest(user_id)]
            found = own + [key for key in k.user_keys(user_id) if key not in own]
            self._user_keys[user_id] = found
        return found

    def _args(self, events: Sequence[PendingEvent]) -> list[str | int | bytes]:
        payload, digests = self._events_args(events)
        return [*self._head, payload, *self._tail, digests]

    def _events_args(self, events: Sequence[PendingEvent]) -> tuple[bytes, bytes]:
        """ARGV 8 (the events' JSON) and ARGV 11 (their dedup digests)."""
        interest = self._interest
        payload = [(watermark_field(ev.topic, ev.partition), ev.offset, ev.inc.ts_ms,
                    ev.inc.minute, ev.inc.day, ev.inc.title or "", ev.inc.adds,
                    ev.item_id if interest else "", ev.weight if interest else 0)
                   for ev in events]
        return (_PAYLOAD.encode(payload),
                b"".join([dedup_member(ev.event_id) for ev in events]))

    def _packed_call(self, user_id: str, events: Sequence[PendingEvent]) -> bytes:
        """One user's EVALSHA as RESP bytes: its constant part (command, script, KEYS and
        the fixed ARGV) is encoded once per user, not by redis-py's packer per call."""
        head = self._packed_keys.get(user_id)
        if head is None:
            if len(self._packed_keys) >= KEYS_CACHED:
                self._packed_keys.clear()
            keys = self.user_keys(user_id)
            args = ["EVALSHA", self._apply.sha, len(keys), *keys, *self._head]
            head = b"*%d\r\n%s" % (len(args) + 1 + len(self._tail) + 1,
                                    b"".join(_bulk(a) for a in args))
            self._packed_keys[user_id] = head
        payload, digests = self._events_args(events)
        return b"".join((head, _bulk(payload), self._packed_tail, _bulk(digests)))

    def apply(self, by_user: dict[str, list[PendingEvent]]) -> dict[str, UserResult]:
        """Apply every user's events (one script call per user, pipelined by chunk).

        Returns only once Redis acknowledged every call; raises ``redis.RedisError``
        otherwise (nothing is committed to Kafka then, and the batch is redelivered).
        """
        results: dict[str, UserResult] = {}
        users = list(by_user)
        start = 0
        while start < len(users):
            calls = redis_scripts.ScriptCalls(self.client)
            chunk: list[str] = []
            events = 0
            while start < len(users) and (not chunk or events < self.cfg.redis_chunk):
                uid = users[start]
                calls.add(self._apply, self.user_keys(uid), self._args(by_user[uid]))
                chunk.append(uid)
                events += len(by_user[uid])
                start += 1
            for uid, reply in zip(chunk, calls.execute(), strict=True):
                results[uid] = self._result(reply)
        return results

    def _result(self, reply: Sequence[bytes | None]) -> UserResult:
        statuses, raw_hash, raw_titles, version, text = reply
        state = parse_state(split_pairs(raw_hash or b""),
                            ((t, float(sc)) for t, sc in split_pairs(raw_titles or b"")),
                            shared=True)
        return UserResult((statuses or b"").decode(), state,
                          text.decode() if text is not None else None,
                          (version or b"0").decode())

    def send_apply(self, by_user: dict[str, list[PendingEvent]]) -> InFlight:
        """Send every user's script call now and read the replies later (``collect``).

        Lets the caller poll and validate the next batch while Redis works on this one.
        The calls use EVALSHA on a connection of their own; a Redis that lost its script
        cache (restart) answers NOSCRIPT and ``collect`` redoes those users with
        ``apply``, which loads the script (a NOSCRIPT call did not run, so nothing is
        applied twice).
        """
        if redis_scripts.is_cluster(self.client):  # no one connection: ``collect`` applies
            return InFlight(list(by_user), by_user, None)
        if not self._loaded:
            self.client.script_load(APPLY_LUA)
            self._loaded = True
        users = list(by_user)
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(  # a list: one bytes object would be iterated
                [b"".join([self._packed_call(uid, by_user[uid]) for uid in users])])
        except BaseException:
            conn.disconnect()
            pool.release(conn)
            raise
        return InFlight(users, by_user, conn)

    def collect(self, inflight: InFlight) -> dict[str, UserResult]:
        """The results of ``send_apply``'s calls, once Redis acknowledged all of them."""
        if inflight.conn is None:
            return self.apply(inflight.by_user)
        pool = self.client.connection_pool
        results: dict[str, UserResult] = {}
        missing: list[str] = []
        try:
            for uid in inflight.users:
                try:
                    results[uid] = self._result(inflight.conn.read_response())
                except redis.exceptions.NoScriptError:
                    missing.append(uid)
        except BaseException:
            inflight.conn.disconnect()
            raise
        finally:
            pool.release(inflight.conn)
        if missing:
            self._loaded = False
            results.update(self.apply({uid: inflight.by_user[uid] for uid in missing}))
        return results

    def note_item(self, item_id: str, title: str | None, category: str | None) -> None:
        """Remember an item seen with a text; the next ``store_texts`` registers it (once per
        process, ``SEEN_ITEMS`` most recent items, again after Redis lost its data) before
        it marks any user dirty."""
        if not self._interest:  # interest.max_items 0: items are never embedded
            return
        if item_id in self._seen_items or item_id in self._new_items:
            return
        self._new_items[item_id] = (title or "", category or "")

    def _register_items(self, pipe: Any, now_ms: int) -> list[str]:
        """Queue the noted items' registration on ``pipe``; they count as registered only
        once the pipeline succeeded (``_execute``), so a failed write sends them again."""
        if not self._new_items:
            return []
        for item_id, (title, category) in self._new_items.items():
            key = self.keys.item(item_id)
            if title:
                pipe.hsetnx(key, "title", title)
            if category:
                pipe.hsetnx(key, "category", category)
        pipe.zadd(self.keys.items_dirty(), dict.fromkeys(self._new_items, now_ms), nx=True)
        return list(self._new_items)

    def _execute(self, pipe: Any, items: list[str]) -> None:
        """Run a ``store_texts`` pipeline with the state epoch read at its end: the items
        registered become remembered; when the epoch changed or vanished since the last
        write (Redis lost its data, ``segstream.state_epoch``), the remembered items are
        forgotten, so the next batches register them again."""
        pipe.hget(self.keys.state_epoch(), "id")
        epoch = pipe.execute()[-1]
        if self._epoch is not None and epoch != self._epoch:
            self._seen_items.clear()
        self._epoch = epoch
        for item_id in items:
            self._new_items.pop(item_id, None)
            self._seen_items[item_id] = None
        while len(self._seen_items) > SEEN_ITEMS:
            self._seen_items.popitem(last=False)

    def store_texts(self, updates: Iterable[tuple[str, str, bool]],
                    rfm: dict[str, Rfm] | None = None,
                    versions: Mapping[str, str] | None = None) -> int:
        """Write RFM inputs and changed texts, register new items (``note_item``), then
        mark users dirty; returns how many were marked.

        ``rfm`` holds the users' ``Rfm`` to publish (``Keys.rfm``, with the user TTL).
        ``updates`` holds ``(user_id, text, mark)``: the text ('' = unchanged) is written
        (with the user TTL) and the user ``ZADD NX``-ed to the dirty queue when ``mark`` is
        true. ``versions`` holds the state version (``UserResult.version``) each user's
        text and RFM were rendered from: they are written only while the state is still
        at that version (``WRITE_LUA``), so an older batch finishing late (its consumer
        lost the partition meanwhile) cannot overwrite a newer one's; a user without a
        version is written unconditionally. RFM and text are written before the mark, so
        an encoder that claims the user reads the new text and the segmenter that assigns
        it reads the new RFM.
        """
        now_ms = int(time.time() * 1000)
        ttl = self.settings.redis.user_ttl_s
        rfm, versions = rfm or {}, versions or {}
        marked = [(uid, text) for uid, text, mark in updates if mark]
        texts = {uid: text for uid, text in marked if text}
        if not marked and not rfm and not self._new_items:
            return 0
        if texts or rfm:
            keys, writes = self.keys, redis_scripts.ScriptCalls(self.client)
            for uid in texts.keys() | rfm.keys():
                fields = rfm[uid].to_fields() if uid in rfm else {}
                writes.add(self._write, [keys.features(uid), keys.rfm(uid), keys.text(uid)],
                           [versions.get(uid, "*"), ttl, texts.get(uid, ""),
                            *itertools.chain.from_iterable(fields.items())])
            writes.execute()
        pipe = self.client.pipeline(transaction=False)
        items = self._register_items(pipe, now_ms)
        if marked:
            pipe.zadd(self.keys.dirty(), {uid: now_ms for uid, _ in marked}, nx=True)
        self._execute(pipe, items)
        return len(marked)

    def read_rfm(self, user_id: str) -> Rfm | None:
        """The RFM inputs ingest last published for a user (None: none yet)."""
        return Rfm.from_fields(self.client.hgetall(self.keys.rfm(user_id)))

    def read_user(self, user_id: str) -> tuple[UserState, str | None]:
        """A user's state and stored feature text (empty state for an unknown user)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.features(user_id))
        pipe.zrange(self.keys.titles(user_id), 0, -1, withscores=True)
        pipe.get(self.keys.text(user_id))
        raw_hash, titles, text = pipe.execute()
        state = parse_state(((k.decode(), v.decode()) for k, v in raw_hash.items()),
                            ((t.decode(), score) for t, score in titles))
        return state, text.decode() if text is not None else None

    def read_interest(self, user_id: str) -> dict[str, float]:
        """A user's interest state: item → anchored weight (empty for an unknown user)."""
        raw = cast(list[tuple[bytes, float]], self.client.zrange(
            self.keys.interest(user_id), 0, -1, withscores=True))
        return {item.decode(): float(w) for item, w in raw}

    def dirty_count(self) -> int:
        return int(self.client.zcard(self.keys.dirty()))

    def memory_usage(self, user_id: str) -> int:
        """Bytes Redis uses for one user's keys (``MEMORY USAGE``, embeddings excluded)."""
        total = 0
        for key in [*self.user_keys(user_id)[:5], self.keys.rfm(user_id)]:
            total += int(self.client.memory_usage(key, samples=0) or 0)
        return total

