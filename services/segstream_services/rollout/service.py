"""``Rollout``: switch the live encoder model (or back) against Redis and Kafka.

``segstream model rollout DIR`` runs these phases (the registry records each, so every
process and ``segstream model status`` can see where it stands):

1. ``reembedding``: every user's vector is built under the new model into a shadow hash
   ``Keys.emb_next`` by the live encoder's view code (``vectors``: the items the users
   need embedded under the new version, the interest view, the feature-text view when
   its weight is positive, combined as the workers combine them); the encoder workers
   keep serving the old version and the segmenter keeps assigning in the old space
   meanwhile. Users whose interest state or text changed while this ran are rebuilt
   until none is stale.
2. ``cutover`` (under the segmenter's lock): the segmenter refits in the new space with
   ``OnlineSegmenter.refit_by_members`` — segment ids follow their members — and only
   users whose id changed get a change record (carrying the new ``model_version``);
   catalog entries carry it too. The old vectors move to ``Keys.emb_prev``, the shadow
   ones become ``Keys.emb``; the old segmenter state and ids are kept for a rollback.
3. ``active``: the registry names the new version; encoder workers (``ModelWatcher``)
   load it before their next claim, without a restart.

``segstream model rollback`` swaps back: the previous vectors and segmenter state return,
users whose id differs from their pre-rollout id get a change record, and the workers
load the previous model; the version left becomes the previous one, so a second rollback
undoes the first. Both write segment state through the segmenter's one writer
(``SegmentStateWriter.commit``: change records, then Redis, then the catalog).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from segstream.config import Settings
from segstream.encoding import Encoder, vec_from_bytes
from segstream.errors import ConfigError, StateError
from segstream.keys import Keys
from segstream.records import change_record
from segstream.redis_io import decode_fields, hash_fields
from segstream.redis_scripts import is_cluster
from segstream.segmentation import Assignment, Observation, OnlineSegmenter
from segstream.segmentation.labels import text_changes
from segstream_services.rollout.migrate import RolloutReport, migrate, restore
from segstream_services.rollout.registry import Registry
from segstream_services.rollout.vectors import NextVectors
from segstream_services.segmenter import store

KeyOf = Callable[[str], str]  # a per-user key method of ``Keys``


class Rollout:
    """Runs a rollout or rollback against Redis (and the segments/catalog topics)."""

    def __init__(self, client: redis.Redis, prefix: str, publish: store.Publish,
                 segments_topic: str, catalog_topic: str, batch: int = 256,
                 assignments_topic: str | None = None, user_ttl_s: int = 0,
                 settings: Settings | None = None) -> None:
        if is_cluster(client):  # the vector swap spans users' slots in one MULTI/EXEC
            raise ConfigError("model rollout does not run on a Redis Cluster yet: its "
                              "vector swap is one transaction across users' hash slots")
        self.client = client
        self.settings = settings or Settings()  # the view weights and item settings
        self.keys = Keys(prefix)
        self.registry = Registry(client, self.keys)
        self.user_ttl_s = user_ttl_s  # per-user keys it writes expire (0: never)
        self.writer = store.SegmentStateWriter(client, self.keys, publish, segments_topic,
                                               catalog_topic, assignments_topic, user_ttl_s)
        self.batch = batch

    def current_model_version(self) -> str:
        """The model version of the stored segmenter state ("" before any)."""
        model, _, _ = store.read_state(self.client, self.keys)
        return model.model_version or "" if model else ""

    # ------------------------------------------------------------------ users
    def users(self) -> list[str]:
        """Every user with a stored feature text."""
        return sorted(self.keys.user_of_text(k) for k in
                      self.client.scan_iter(match=self.keys.text_pattern(), count=1000))

    def reembed(self, encoder: Encoder, users: list[str],
                progress: Callable[[int], None] | None = None, max_passes: int = 5) -> int:
        """Build every user's vector under ``encoder`` into ``emb_next`` exactly as a live
        encoder worker would (``vectors.NextVectors``: item vectors, interest and text
        views, ``views.combine``); repeat for users whose interest state or text changed
        meanwhile. Returns the number of item and feature texts encoded."""
        built = NextVectors(self.client, self.keys, self.settings, encoder)
        todo, encoded = list(users), 0
        for _ in range(max_passes):
            need: list[str] = []
            for start in range(0, len(todo), self.batch):  # items first: one centre
                chunk = todo[start:start + self.batch]
                profiles = built.read(chunk)
                pipe = self.client.pipeline(transaction=False)
                for uid in profiles:
                    pipe.hmget(self.keys.emb_next(uid), ["model_version", "profile_digest"])
                stale = {uid: profiles[uid] for uid, (mv, digest) in
                         zip(profiles, pipe.execute(), strict=True)
                         if mv != encoder.model_version.encode()
                         or digest != profiles[uid][2].encode()}
                need.extend(stale)
                encoded += built.embed_items(stale)
                if progress:
                    progress(len(chunk))
            center = built.center()
            for start in range(0, len(need), self.batch):
                rows, texts = built.build(built.read(need[start:start + self.batch]), center)
                encoded += texts
                pipe = self.client.pipeline(transaction=False)
                for uid, fields in rows.items():
                    pipe.delete(self.keys.emb_next(uid))
                    pipe.hset(self.keys.emb_next(uid), mapping=hash_fields(fields))
                    if self.user_ttl_s:  # COPY to emb/emb_prev carries the TTL along
                        pipe.expire(self.keys.emb_next(uid), self.user_ttl_s)
                pipe.execute()
            todo = self._changed_since(built, users)  # profiles that changed meanwhile
            if not todo:
                break
        return encoded

    def _changed_since(self, built: NextVectors, users: list[str]) -> list[str]:
        profiles = built.read(users)
        pipe = self.client.pipeline(transaction=False)
        for uid in profiles:
            pipe.hget(self.keys.emb_next(uid), "profile_digest")
        return [uid for uid, digest in zip(profiles, pipe.execute(), strict=True)
                if (digest or b"").decode() != profiles[uid][2]]

    # ------------------------------------------------------------------ phases
    def start(self, path: str, version: str, current_path: str, current_version: str) -> None:
        state = self.registry.read()
        if state.get("phase") in ("reembedding", "cutover") and \
                state.get("target_version") != version:
            raise StateError(f"a rollout to {state.get('target_version')} is in progress")
        active = state.get("active_version") or current_version
        if version == active:
            raise StateError(f"{version} is already the active model")
        self.registry.set(active_path=state.get("active_path") or current_path,
                          active_version=active, target_path=path, target_version=version,
                          phase="reembedding")

    def cutover(self, users: list[str], lock_ttl_s: float = 30.0, settle_s: float = 0.0
                ) -> RolloutReport:
        """Move the segmenter, the vectors and the registry to the target version."""
        state = self.registry.read()
        target, path = state["target_version"], state["target_path"]
        with self.writer.lock(lock_ttl_s) as lock:
            self.registry.set(phase="cutover")
            report = self._switch(users, target, lock)
            self.registry.set(previous_path=state.get("active_path", ""),
                              previous_version=state.get("active_version", ""),
                              active_path=path, active_version=target, phase="active",
                              users=report.users, changed=report.changed,
                              changed_share=round(report.changed_share, 6),
                              bound_share=round(report.bound_share, 6))
        self.remark_stale(users, target, settle_s)
        return report

    def remark_stale(self, users: list[str], version: str, settle_s: float) -> int:
        """After ``settle_s`` (workers switch models within ``ModelWatcher.every_s``), queue
        users whose live vector is not ``version`` — written by a worker that had not
        switched yet — for re-encoding. Returns how many."""
        if settle_s:
            time.sleep(settle_s)
        pipe = self.client.pipeline(transaction=False)
        for uid in users:
            pipe.hget(self.keys.emb(uid), "model_version")
        stale = [uid for uid, mv in zip(users, pipe.execute(), strict=True)
                 if mv is not None and mv.decode() != version]
        if stale:
            now = int(time.time() * 1000)
            self.client.zadd(self.keys.dirty(), dict.fromkeys(stale, now), nx=True)
        return len(stale)

    def rollback(self, lock_ttl_s: float = 30.0, settle_s: float = 0.0) -> RolloutReport:
        """Return to the previous model: its vectors, segmenter state and users' ids."""
        state = self.registry.read()
        if not state.get("previous_version"):
            raise StateError("no previous model version to roll back to")
        with self.writer.lock(lock_ttl_s) as lock:
            report = self._restore(state["previous_version"], lock)
            self.registry.set(active_path=state["previous_path"],
                              active_version=state["previous_version"],
                              previous_path=state["active_path"],
                              previous_version=state["active_version"], target_path="",
                              target_version="", phase="active", users=report.users,
                              changed=report.changed,
                              changed_share=round(report.changed_share, 6), bound_share="")
        self.remark_stale(sorted(set(self.users())), state["previous_version"], settle_s)
        return report

    # ------------------------------------------------------------------ internals
    def _read(self, users: list[str], vectors: KeyOf, version: str
              ) -> tuple[list[Observation], dict[str, dict[str, str]]]:
        """Users' observations from their ``vectors`` key when it holds ``version``, and
        their stored segment hashes."""
        pipe = self.client.pipeline(transaction=False)
        for uid in users:
            pipe.hgetall(vectors(uid))
            pipe.hgetall(self.keys.seg(uid))
            pipe.get(self.keys.text(uid))
        got = pipe.execute()
        batch, segs = [], {}
        for i, uid in enumerate(users):
            emb, seg, text = got[3 * i], store.decode_hash(got[3 * i + 1]), got[3 * i + 2]
            if b"vec" not in emb or emb.get(b"model_version", b"").decode() != version:
                continue
            segs[uid] = seg
            batch.append(Observation(uid, vec_from_bytes(emb[b"vec"]),
                                     text.decode() if text else "",
                                     seg.get("segment_id") or None))
        return batch, segs

    def _switch(self, users: list[str], version: str, lock: Any) -> RolloutReport:
        model, _, applied = store.read_state(self.client, self.keys)
        if model is None:
            raise StateError("the segmenter has no state yet: nothing to migrate")
        batch, segs = self._read(users, self.keys.emb_next, version)
        if len(batch) < model.config.k:
            raise StateError(f"{len(batch)} users have a {version} vector; the segmenter "
                             f"needs at least k={model.config.k}")
        now = int(time.time() * 1000)
        new, assignments, report = migrate(model, batch, version, now)
        prev_ids = self.keys.model_prev_ids()
        self.client.delete(prev_ids)
        ids = {uid: seg["segment_id"] for uid, seg in segs.items() if seg.get("segment_id")}
        if ids:
            self.client.hset(prev_ids, mapping=hash_fields(ids))
        self.client.set(self.keys.model_prev_state(), store.encode_model(model))
        self._commit(new, assignments, segs, version, applied, now, lock,
                     self._rotate(assignments, swap=False))
        return report

    def _restore(self, version: str, lock: Any) -> RolloutReport:
        raw = self.client.get(self.keys.model_prev_state())
        if raw is None:
            raise StateError("the previous segmenter state is gone; roll out the previous "
                             "model directory instead")
        old = store.decode_model(raw)
        current, _, applied = store.read_state(self.client, self.keys)
        prev_ids = self.keys.model_prev_ids()
        ids = decode_fields(self.client.hgetall(prev_ids))
        batch, segs = self._read(sorted(ids), self.keys.emb_prev, version)
        batch = [Observation(o.key, o.vector, o.text, segs[o.key].get("segment_id"))
                 for o in batch]
        now = int(time.time() * 1000)
        assignments = restore(old, batch, ids) if batch else []
        changed = [a.key for a in assignments if a.changed]
        current_raw = self.client.hget(self.keys.seg_state(), "model")
        self._commit(old, assignments, segs, version, applied, now, lock,
                     self._rotate(assignments, swap=True))  # a 2nd rollback undoes it
        if current_raw is not None:
            self.client.set(self.keys.model_prev_state(), current_raw)
        now_ids = {uid: seg["segment_id"] for uid, seg in segs.items() if seg.get("segment_id")}
        self.client.delete(prev_ids)
        if now_ids:
            self.client.hset(prev_ids, mapping=hash_fields(now_ids))
        return RolloutReport(len(batch), len(changed), len(changed),
                             (current.model_version or "") if current else "", version, changed)

    def _rotate(self, assignments: list[Assignment], swap: bool) -> Callable[[Any], None]:
        """Pipeline commands moving each user's vectors: rollout (``swap=False``) keeps the
        live vector as ``emb_prev`` and makes ``emb_next`` live; rollback swaps ``emb`` and
        ``emb_prev``."""
        k = self.keys

        def queue(pipe: Any) -> None:
            for a in assignments:
                live, prev = k.emb(a.key), k.emb_prev(a.key)
                if swap:
                    tmp = k.emb_swap(a.key)
                    pipe.copy(live, tmp, replace=True)
                    pipe.copy(prev, live, replace=True)
                    pipe.copy(tmp, prev, replace=True)
                    pipe.delete(tmp)
                else:
                    pipe.copy(live, prev, replace=True)  # keep the other version's vector
                    pipe.copy(k.emb_next(a.key), live, replace=True)
        return queue

    def _commit(self, model: OnlineSegmenter, assignments: list[Assignment],
                segs: dict[str, dict[str, str]], version: str, applied: list[str], now: int,
                lock: Any, rotate: Callable[[Any], None]) -> None:
        """Change records for moved users, then users, vectors, model and the full
        catalog, through the one writer."""
        changes = []
        for a in assignments:
            if a.changed:
                seg = segs[a.key]
                changes.append((a.key, change_record(
                    a, model.segments[a.segment_id].label, seg.get("engagement") or "active",
                    text_changes(a.text, a.text), version, model.version,
                    int(seg.get("last_active_ms") or now), now)))
        users = {a.key: {**store.assignment_fields(a, model.version, now),
                         "model_version": version} for a in assignments}
        self.writer.commit(model, now, changes=changes, users=users, texts={},
                           applied=applied, lock=lock, extra=rotate)
