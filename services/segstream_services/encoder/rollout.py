"""Model rollout and rollback: a new encoder version without a restart or an id reshuffle.

``segstream model rollout DIR`` runs these phases (the registry hash ``<prefix>:model``
records each, so every process and ``segstream model status`` can see where it stands):

1. ``reembedding``: every user's current feature text is encoded with the new model into a
   shadow hash ``u:{uid}:emb_next``; the encoder workers keep serving the old version and
   the segmenter keeps assigning in the old space meanwhile. Users whose text changed
   while this ran are re-encoded until none is stale.
2. ``cutover`` (under the segmenter's model lock): the segmenter refits in the new space
   with ``OnlineSegmenter.refit_by_members`` — segment ids follow their members — and
   only users whose id changed get a change record (carrying the new ``model_version``);
   catalog entries carry it too. The old vectors move to ``u:{uid}:emb_prev``, the shadow
   ones become ``u:{uid}:emb``; the old segmenter state and ids are kept for a rollback.
3. ``active``: the registry names the new version; encoder workers (``ModelWatcher``)
   load it before their next claim, without a restart.

``segstream model rollback`` swaps back: the previous vectors (``emb_prev``) and segmenter
state return, users whose id differs from their pre-rollout id get a change record, and
the workers load the previous model; the version left becomes the previous one, so a
second rollback undoes the first.

The id bound (tested): a user keeps its id whenever its old segment and its new cluster
are *mutual majorities* — more than half of the old segment's users fall into the new
cluster and more than half of the new cluster came from the old segment
(``segmentation.ids.match_by_overlap`` keeps every such pair). So the share of users whose id
changes is at most ``1 - sum(overlap of mutual-majority pairs) / users``, which
``RolloutReport`` states beside the share that did change.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from segstream.encoding import Encoder, text_hash, vec_from_bytes, vec_to_bytes
from segstream.errors import InfraError, StateError
from segstream.redis_io import Keys
from segstream.segmentation import Assignment, Observation, OnlineSegmenter

log = logging.getLogger(__name__)
Publish = Callable[[str, list[tuple[str, dict[str, Any]]]], None]


@dataclass
class RolloutReport:
    """What a cutover (or rollback) did to the segment ids."""

    users: int
    changed: int
    bound_changed: int           # the most users that may change (see the module docstring)
    from_version: str
    to_version: str
    changed_users: list[str] = field(default_factory=list)

    @property
    def changed_share(self) -> float:
        return self.changed / self.users if self.users else 0.0

    @property
    def bound_share(self) -> float:
        return self.bound_changed / self.users if self.users else 0.0


def mutual_majority_kept(previous: Sequence[str | None], labels: Sequence[int]) -> set[int]:
    """Indices of users whose old segment and new cluster are mutual (strict) majorities."""
    pairs = Counter((p, int(n)) for p, n in zip(previous, labels, strict=True) if p)
    old_size = Counter(p for p in previous if p)
    new_size = Counter(int(n) for n in labels)
    good = {(p, n) for (p, n), c in pairs.items()
            if 2 * c > old_size[p] and 2 * c > new_size[n]}
    return {i for i, (p, n) in enumerate(zip(previous, labels, strict=True))
            if (p, int(n)) in good}


def migrate(model: OnlineSegmenter, batch: list[Observation], new_version: str, now_ms: int
            ) -> tuple[OnlineSegmenter, list[Assignment], RolloutReport]:
    """A copy of ``model`` refitted in the new embedding space (ids follow members), every
    user's assignment there, and the report (changed share and its bound)."""
    new = OnlineSegmenter.from_dict(model.to_dict())
    old_version = model.model_version or ""
    assignments = new.refit_by_members(batch, now_ms)
    new.model_version = new_version
    X = new._prepare(np.stack([np.asarray(o.vector) for o in batch]))
    nearest = new._dist(X).argmin(axis=1)
    kept = mutual_majority_kept([o.previous for o in batch], nearest)
    changed = [a.key for a in assignments if a.previous_segment_id is not None and a.changed]
    seen = sum(o.previous is not None for o in batch)
    report = RolloutReport(seen, len(changed), seen - len(kept), old_version, new_version,
                           changed)
    return new, assignments, report


class Registry:
    """The ``<prefix>:model`` hash: active, previous and target model, and the phase."""

    FIELDS = ("active_path", "active_version", "previous_path", "previous_version",
              "target_path", "target_version", "phase", "users", "changed", "changed_share",
              "bound_share", "updated_ms")

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.key = keys.global_("model")
        self.prev_state = keys.global_("model:prev_state")
        self.prev_ids = keys.global_("model:prev_ids")

    def read(self) -> dict[str, str]:
        raw = self.client.hgetall(self.key)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def set(self, **values: Any) -> None:
        values["updated_ms"] = int(time.time() * 1000)
        self.client.hset(self.key, mapping={k: str(v) for k, v in values.items()})


class ModelWatcher:
    """Keeps an encoder worker on the registry's active model: before a claim, at most
    once per ``every_s``, it loads the active version when it differs (no restart)."""

    def __init__(self, client: redis.Redis, keys: Keys, every_s: float = 1.0,
                 load: Callable[[str], Encoder] | None = None) -> None:
        self.registry = Registry(client, keys)
        self.every_s = every_s
        self.load = load or (lambda path: Encoder(path))
        self._at = 0.0

    def check(self, worker: Any) -> bool:
        """Swap ``worker.encoder`` (and its text cache) when the active version moved."""
        if time.monotonic() - self._at < self.every_s:
            return False
        self._at = time.monotonic()
        state = self.registry.read()
        version, path = state.get("active_version"), state.get("active_path")
        if not version or not path or version == worker.encoder.model_version:
            return False
        encoder = self.load(path)
        if encoder.model_version != version:
            log.error("model %s has version %s, the registry says %s: not switching", path,
                      encoder.model_version, version)
            return False
        worker.swap_encoder(encoder)
        log.info("encoder switched to %s without a restart", version)
        return True


class Rollout:
    """Runs a rollout or rollback against Redis (and the segments/catalog topics)."""

    def __init__(self, client: redis.Redis, prefix: str, publish: Publish,
                 segments_topic: str, catalog_topic: str, batch: int = 256) -> None:
        from segstream_services.segmenter import store

        self.client = client
        self.keys = Keys(prefix)
        self.sk = store.SegKeys(prefix)
        self.registry = Registry(client, self.keys)
        self.publish = publish
        self.topics = (segments_topic, catalog_topic)
        self.batch = batch

    # ------------------------------------------------------------------ users
    def users(self) -> list[str]:
        """Every user with a stored feature text."""
        pattern = self.keys.user("*", "text")
        head, tail = pattern.split("{*}")
        out = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            k = key.decode()
            out.append(k[len(head) + 1:-len(tail) - 1])
        return sorted(out)

    def reembed(self, encoder: Encoder, users: list[str],
                progress: Callable[[int], None] | None = None, max_passes: int = 5) -> int:
        """Encode every user's current text with ``encoder`` into ``emb_next``; repeat for
        users whose text changed meanwhile. Returns the number of texts encoded."""
        version = encoder.model_version
        todo, encoded = list(users), 0
        for _ in range(max_passes):
            for start in range(0, len(todo), self.batch):
                chunk = todo[start:start + self.batch]
                pipe = self.client.pipeline(transaction=False)
                for uid in chunk:
                    pipe.get(self.keys.user(uid, "text"))
                    pipe.hmget(self.keys.user(uid, "emb_next"), ["model_version", "text_hash"])
                got = pipe.execute()
                need: dict[str, str] = {}
                for i, uid in enumerate(chunk):
                    raw, (mv, th) = got[2 * i], got[2 * i + 1]
                    if raw is None:
                        continue
                    text = raw.decode("utf-8", errors="replace")
                    h = text_hash(text)
                    if mv == version.encode() and th == h.encode():
                        continue
                    need[uid] = text
                distinct = sorted(set(need.values()))
                vecs = dict(zip(distinct, encoder.encode(distinct), strict=True)) \
                    if distinct else {}
                encoded += len(distinct)
                pipe = self.client.pipeline(transaction=False)
                for uid, text in need.items():
                    pipe.hset(self.keys.user(uid, "emb_next"), mapping={
                        "vec": vec_to_bytes(vecs[text]), "model_version": version,
                        "text_hash": text_hash(text), "encoded_ms": int(time.time() * 1000)})
                pipe.execute()
                if progress:
                    progress(len(chunk))
            todo = self._changed_since(users)  # texts that changed while this pass ran
            if not todo:
                break
        return encoded

    def _changed_since(self, users: list[str]) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for uid in users:
            pipe.get(self.keys.user(uid, "text"))
            pipe.hget(self.keys.user(uid, "emb_next"), "text_hash")
        got = pipe.execute()
        return [uid for i, uid in enumerate(users)
                if got[2 * i] is not None and (got[2 * i + 1] or b"").decode()
                != text_hash(got[2 * i].decode("utf-8", errors="replace"))]

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
        lock = self.client.lock(self.sk.lock, timeout=lock_ttl_s,
                                blocking_timeout=lock_ttl_s * 2)
        if not lock.acquire():
            raise InfraError("could not take the segmenter model lock")
        try:
            self.registry.set(phase="cutover")
            report = self._switch(users, "emb_next", target, keep_previous=True)
            self.registry.set(previous_path=state.get("active_path", ""),
                              previous_version=state.get("active_version", ""),
                              active_path=path, active_version=target, phase="active",
                              users=report.users, changed=report.changed,
                              changed_share=round(report.changed_share, 6),
                              bound_share=round(report.bound_share, 6))
        finally:
            lock.release()
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
            pipe.hget(self.keys.user(uid, "emb"), "model_version")
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
        lock = self.client.lock(self.sk.lock, timeout=lock_ttl_s,
                                blocking_timeout=lock_ttl_s * 2)
        if not lock.acquire():
            raise InfraError("could not take the segmenter model lock")
        try:
            report = self._restore(state["previous_version"])
            self.registry.set(active_path=state["previous_path"],
                              active_version=state["previous_version"],
                              previous_path=state["active_path"],
                              previous_version=state["active_version"], target_path="",
                              target_version="", phase="active", users=report.users,
                              changed=report.changed,
                              changed_share=round(report.changed_share, 6), bound_share="")
        finally:
            lock.release()
        self.remark_stale(sorted(set(self.users())), state["previous_version"], settle_s)
        return report

    # ------------------------------------------------------------------ internals
    def _switch(self, users: list[str], source: str, version: str, keep_previous: bool
                ) -> RolloutReport:
        from segstream_services.segmenter import store

        model, _, applied = store.read_state(self.client, self.sk)
        if model is None:
            raise StateError("the segmenter has no state yet: nothing to migrate")
        pipe = self.client.pipeline(transaction=False)
        for uid in users:
            pipe.hgetall(self.keys.user(uid, source))
            pipe.hgetall(self.sk.user(uid))
            pipe.get(self.keys.user(uid, "text"))
        got = pipe.execute()
        batch, segs = [], {}
        for i, uid in enumerate(users):
            emb, seg, text = got[3 * i], store.decode_hash(got[3 * i + 1]), got[3 * i + 2]
            if emb.get(b"model_version", b"").decode() != version or b"vec" not in emb:
                continue
            segs[uid] = seg
            batch.append(Observation(uid, vec_from_bytes(emb[b"vec"]),
                                     text.decode() if text else "",
                                     seg.get("segment_id") or None))
        if len(batch) < model.config.k:
            raise StateError(f"{len(batch)} users have a {version} vector; the segmenter "
                              f"needs at least k={model.config.k}")
        now = int(time.time() * 1000)
        new, assignments, report = migrate(model, batch, version, now)
        if keep_previous:
            self.client.delete(self.registry.prev_ids)
            ids = {uid: seg["segment_id"] for uid, seg in segs.items() if seg.get("segment_id")}
            if ids:
                self.client.hset(self.registry.prev_ids, mapping=ids)
            self.client.set(self.registry.prev_state, store.encode_model(model))
        self._commit(new, assignments, segs, version, applied, now,
                     rotate=(source, "emb", "emb_prev"))
        return report

    def _restore(self, version: str) -> RolloutReport:
        from segstream_services.segmenter import store

        raw = self.client.get(self.registry.prev_state)
        if raw is None:
            raise StateError("the previous segmenter state is gone; roll out the previous "
                              "model directory instead")
        old = store.decode_model(raw)
        current, _, applied = store.read_state(self.client, self.sk)
        ids = {k.decode(): v.decode() for k, v in self.client.hgetall(self.registry.prev_ids
                                                                      ).items()}
        users = sorted(ids)
        pipe = self.client.pipeline(transaction=False)
        for uid in users:
            pipe.hgetall(self.sk.user(uid))
            pipe.hgetall(self.keys.user(uid, "emb_prev"))
            pipe.get(self.keys.user(uid, "text"))
        got = pipe.execute()
        assignments, segs, batch = [], {}, []
        for i, uid in enumerate(users):
            seg, emb, text = store.decode_hash(got[3 * i]), got[3 * i + 1], got[3 * i + 2]
            if b"vec" not in emb or emb.get(b"model_version", b"").decode() != version:
                continue
            segs[uid] = seg
            batch.append(Observation(uid, vec_from_bytes(emb[b"vec"]),
                                     text.decode() if text else "", seg.get("segment_id")))
        now = int(time.time() * 1000)
        if batch:
            X = old._prepare(np.stack([o.vector for o in batch]))
            dist = old._dist(X)
            for o, d in zip(batch, dist, strict=True):
                a = old._assign_one(Observation(o.key, o.vector, o.text, ids[o.key]), d)
                a.previous_segment_id = o.previous
                a.changed = a.segment_id != o.previous
                a.reason = "moved" if a.changed else "stayed"
                assignments.append(a)
        changed = [a.key for a in assignments if a.changed]
        current_raw = self.client.hget(self.sk.state, "model")
        self._commit(old, assignments, segs, version, applied, now,
                     rotate=("emb_prev", "emb", "emb_prev"))  # swap: a 2nd rollback undoes it
        if current_raw is not None:
            self.client.set(self.registry.prev_state, current_raw)
        now_ids = {uid: seg["segment_id"] for uid, seg in segs.items() if seg.get("segment_id")}
        self.client.delete(self.registry.prev_ids)
        if now_ids:
            self.client.hset(self.registry.prev_ids, mapping=now_ids)
        return RolloutReport(len(batch), len(changed), len(changed),
                             current.model_version if current else "", version, changed)

    def _commit(self, model: OnlineSegmenter, assignments: list[Assignment],
                segs: dict[str, dict[str, str]], version: str, applied: list[str], now: int,
                rotate: tuple[str, str, str]) -> None:
        """Publish changes and the catalog, then store model, users and vectors."""
        from segstream.segmentation.labels import text_changes
        from segstream_services.segmenter import store

        records = []
        for a in assignments:
            if a.changed:
                records.append((a.key, store.change_record(
                    a, model.segments[a.segment_id].label, segs[a.key].get("engagement") or
                    "active", text_changes(a.text, a.text), version, model.version,
                    int(segs[a.key].get("last_active_ms") or now), now)))
        self.publish(self.topics[0], records)
        entries = store.catalog_entries(model, now)
        self.publish(self.topics[1], list(entries.items()))
        src, live, spare = rotate
        pipe = self.client.pipeline(transaction=False)
        for a in assignments:
            pipe.hset(self.sk.user(a.key), mapping={
                "segment_id": a.segment_id, "confidence": round(a.confidence, 6),
                "memberships": json.dumps([[s, round(w, 4)] for s, w in a.memberships],
                                          separators=(",", ":")),
                "tier_path": json.dumps(a.tier_path, separators=(",", ":")),
                "model_version": version, "centroids_version": model.version,
                "assigned_ms": now})
            live_key, src_key = self.keys.user(a.key, live), self.keys.user(a.key, src)
            spare_key = self.keys.user(a.key, spare)
            if src == spare:  # swap live and src
                tmp_key = self.keys.user(a.key, "emb_swap")
                pipe.copy(live_key, tmp_key, replace=True)
                pipe.copy(src_key, live_key, replace=True)
                pipe.copy(tmp_key, src_key, replace=True)
                pipe.delete(tmp_key)
            else:
                pipe.copy(live_key, spare_key, replace=True)  # keep the other version's vector
                pipe.copy(src_key, live_key, replace=True)
        pipe.hset(self.sk.catalog, mapping={k: json.dumps(v) for k, v in entries.items()})
        pipe.hset(self.sk.state, mapping={"model": store.encode_model(model),
                                          "version": model.version,
                                          "applied": json.dumps(applied)})
        pipe.hincrby(self.sk.state, "rev", 1)
        pipe.execute()
