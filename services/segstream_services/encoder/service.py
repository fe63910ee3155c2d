"""The encoder worker: claim dirty users, compute their vectors from their views, hand
them on.

One loop iteration: embed queued items (``items``: each item's text once per model
version, in micro-batches), then claim up to ``claim_batch`` users (size or max-wait
trigger, see ``claims``) and compute each user's vector **without a transformer pass on
their text**: the interest view from their interest state and the item vectors (items a
user needs that have a text but no vector yet are embedded right there), the text view
as last embedded, combined as ``views`` documents (weights ``interest.view_weights``).
Each changed vector is written (fenced, with its ``vec_hash``), then the claims complete,
which appends one ``embedded`` stream entry per user for the segmenter. A user whose
feature text changed is queued for the text view (``textview``: coalesced, at most once
per ``text_min_interval_s``) and embedded ``text_batch`` texts at a time by ``text_step``,
which ``run`` calls from a thread of its own (torch releases the GIL, so a pass over
feature texts never holds up a claim); with a text weight of 0 no feature text is
embedded at all. Any number of workers can run side by side; a killed
worker's claims return to the queue when their lease ends.

Commit order (the crash points of ``segstream.crashpoints``): 1. claim (a Lua call:
users move from ``dirty`` to ``claims``); 2. write the embeddings (fenced); 3. complete
(one Lua call: stream entries appended, claims released). A crash before 3 leaves the
claims to expire back into ``dirty`` (the user is encoded again, the fenced write is
idempotent); 3 is atomic, so each dirty mark yields exactly one stream entry. While the
stream is over ``stream_maxlen`` the worker claims nothing (back-pressure, never a trim).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import redis

from segstream import crashpoints
from segstream.config import Settings, ViewName
from segstream.encoding import Encoder, text_hash, vec_from_bytes, vec_to_bytes
from segstream.errors import InfraError
from segstream.keys import Keys
from segstream.redis_io import check_redis, redis_client
from segstream.stream_entry import EmbeddedEntry
from segstream_services.encoder.cache import EmbeddingCache
from segstream_services.encoder.claims import Claim, ClaimQueue
from segstream_services.encoder.items import ItemVectors
from segstream_services.encoder.language import language_warning
from segstream_services.encoder.metrics import EncoderMetrics
from segstream_services.encoder.pressure import QueueWatch
from segstream_services.encoder.textview import TextView
from segstream_services.encoder.views import (
    active_views,
    combine,
    interest_vector,
    state_of,
    vec_hash,
    view_dims,
)

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What one micro-batch did."""

    users: int = 0
    texts_encoded: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def new_worker_id() -> str:
    """A worker identity unique across hosts and restarts: host-pid-random."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class EncoderWorker:
    """One encoder worker process's loop over the shared dirty queue."""

    def __init__(self, settings: Settings, encoder: Encoder | None = None,
                 client: redis.Redis | None = None, metrics: EncoderMetrics | None = None,
                 worker_id: str | None = None) -> None:
        self.settings = settings
        self.cfg = settings.encoder
        self.weights = dict(settings.interest.view_weights)
        self.views = active_views(self.weights)
        self.keys = Keys(settings.redis.key_prefix)
        self.client = client or redis_client(settings.redis)
        check_redis(self.client)
        self.encoder = encoder or Encoder.from_settings(self.cfg)
        self.worker_id = worker_id or new_worker_id()
        self.queue = ClaimQueue(self.client, self.keys, self.worker_id,
                                settings.redis.user_ttl_s)
        self.cache = (EmbeddingCache(self.client, self.keys, self.encoder.model_version,
                                     self.cfg.cache_ttl_s) if self.cfg.cache_enabled else None)
        self.metrics = metrics or EncoderMetrics()
        self.metrics.set_device(str(self.encoder.device), self.encoder.dtype_name,
                                self.encoder.model_version)
        self._make_views()
        warning = language_warning(self.encoder.path, settings.ingest.text_language)
        if warning:
            log.warning("%s", warning)
        self.totals: Counter[str] = Counter()
        self._totals_lock = threading.Lock()
        self._text_at = 0.0  # when the text view last embedded something (monotonic)
        self.watch = QueueWatch(self.queue, self.metrics, self.cfg.stream_maxlen)
        self.stop_event = threading.Event()
        from segstream_services.rollout.registry import ModelWatcher

        self.problem: str | None = None
        self._in_hand: Claim | None = None  # the claim being processed (kept if it failed)
        self.watcher = ModelWatcher(  # rollout/rollback: a new model without a restart
            self.client, self.keys, load=lambda path: Encoder.from_settings(
                self.cfg.model_copy(update={"model_path": path})),
            on_failure=self.metrics.model_load_failures.inc)

    def swap_encoder(self, encoder: Encoder) -> None:
        """Serve ``encoder`` from the next claim on (a rollout or rollback, see
        ``segstream_services.rollout``)."""
        self.encoder = encoder
        if self.cache is not None:
            self.cache = EmbeddingCache(self.client, self.keys, encoder.model_version,
                                        self.cfg.cache_ttl_s)
        self._make_views()
        self.metrics.device.clear()
        self.metrics.set_device(str(encoder.device), encoder.dtype_name, encoder.model_version)

    def _make_views(self) -> None:
        """Item vectors and the text view under the current encoder."""
        self.items = ItemVectors(self.client, self.keys, self.settings, self.encoder,
                                 self.worker_id, self.metrics.encode_seconds.observe)
        self.text = TextView(self.client, self.keys, self.encoder, self.cache,
                             self.cfg.text_min_interval_s, self.cfg.text_batch,
                             lease_s=self.cfg.lease_s)

    def step(self) -> BatchReport | Claim:
        """Embed queued items, then try one claim; process it if it got users. Returns the
        report, or the empty claim (with its wait hint) when no trigger fired."""
        self.watcher.check(self)
        if self._in_hand is not None:  # the last batch failed (Redis): its users go back now
            given = self.queue.give_back(self._in_hand)
            self._in_hand = None
            log.warning("returned %d users of a failed batch to the queue", given)
        if self.watch.stream_full():
            return Claim(0, "", wait_ms=self.cfg.idle_poll_ms)
        if "interest" in self.views:
            self.items.drain()
        crashpoints.reached("encoder", 1)
        claim = self.queue.claim(self.cfg.claim_batch, self.cfg.max_wait_ms,
                                 int(self.cfg.lease_s * 1000))
        if claim.reclaimed:
            self.metrics.reclaimed.inc(claim.reclaimed)
            log.info("returned %d expired claims to the queue", claim.reclaimed)
        if not claim.users:
            return claim
        self._in_hand = claim
        report = self.process(claim)
        self._in_hand = None
        return report

    def process(self, claim: Claim) -> BatchReport:
        """Compute the claimed users' vectors from their views, store the changed ones and
        complete the claim (see the module docstring)."""
        started = time.perf_counter()
        report = BatchReport(users=len(claim.users))
        use_interest, use_text = "interest" in self.views, "text" in self.views
        pipe = self.client.pipeline(transaction=False)
        for uid, _ in claim.users:
            pipe.zrange(self.keys.interest(uid), 0, -1, withscores=True)
            pipe.get(self.keys.text(uid))
            pipe.hmget(self.keys.emb(uid), _EMB_READ)
        replies = pipe.execute()
        states = [state_of(replies[3 * n]) if use_interest else {}
                  for n in range(len(claim.users))]
        vectors = self.items.vectors({i for st in states for i in st}) if use_interest else {}
        center = self.items.center() if use_interest else None
        version = self.encoder.model_version
        now = _now_ms()
        rows: list[tuple[str, dict[str, bytes | str | int]]] = []
        done: list[EmbeddedEntry] = []
        release: list[str] = []
        due: dict[str, int] = {}
        for n, (uid, dirty_ms) in enumerate(claim.users):
            text = replies[3 * n + 1]
            old_model, old_hash, text_hash_, text_model, text_ms, text_vec = (
                v.decode() if v is not None and k != "text_vec" else v
                for k, v in zip(_EMB_READ, replies[3 * n + 2], strict=True))
            views: dict[ViewName, np.ndarray | None] = {}
            fields: dict[str, bytes | str | int] = {}
            if use_interest:
                iv, outcome, used = interest_vector(states[n], vectors, center)
                if iv is None:
                    report.outcomes[f"interest_{outcome}"] += 1
                views["interest"] = iv
                fields.update(interest_ms=now if iv is not None else 0, interest_items=used,
                              interest_missing=len(states[n]) - used)
            if use_text:
                current = text_model == version and text_vec
                views["text"] = vec_from_bytes(text_vec) if current else None
                if text is not None and (not current or text_hash_ != text_hash(
                        text.decode("utf-8", errors="replace"))):
                    due[uid] = self.text.due_at(int(text_ms) if text_ms else None, now)
            vec = combine(views, self.weights, view_dims(self.encoder))
            if vec is None:
                report.outcomes["no_vector" if text is not None or use_interest
                                else "missing_text"] += 1
                release.append(uid)
                continue
            data = vec_to_bytes(vec)
            vhash = vec_hash(data)
            th = (text_hash_ or "") if current_text(views) else ""
            if old_model == version and old_hash == vhash:
                report.outcomes["unchanged"] += 1
            else:
                report.outcomes["vector"] += 1
                rows.append((uid, {"vec": data, "model_version": version, "vec_hash": vhash,
                                   "encoded_ms": now, **fields}))
            done.append(EmbeddedEntry(uid, version, th, dirty_ms, now))
        crashpoints.reached("encoder", 2)
        stale = self.queue.write_embeddings(claim.fence, rows) if rows else 0
        if stale:
            self.metrics.stale_writes.inc(stale)
        self.text.queue(due)
        crashpoints.reached("encoder", 3)
        appended, lost = self.queue.complete(claim.token, done, release)
        self.watch.appended(appended)
        if lost:
            report.outcomes["lost_claim"] += lost
            log.warning("%d claims expired before completion (lease_s=%.0f too short?)",
                        lost, self.cfg.lease_s)
        report.seconds = time.perf_counter() - started
        self._account(report)
        return report

    def text_step(self) -> int:
        """Embed up to ``text_batch`` due feature texts (the text view); returns how many."""
        if "text" not in self.views:
            return 0
        t0 = time.perf_counter()
        before = self.text.counts["text_encoded"]
        n = self.text.step()
        if n:
            encoded = self.text.counts["text_encoded"] - before
            self.metrics.encode_seconds.observe(time.perf_counter() - t0)
            self.metrics.texts_encoded.inc(encoded)
            self.metrics.cache_misses.inc(encoded)
            self.metrics.cache_hits.inc(n - encoded)
            with self._totals_lock:
                self.totals.update(texts_encoded=encoded, encoded=encoded, cache=n - encoded)
        return n

    def _account(self, report: BatchReport) -> None:
        m = self.metrics
        m.batch_size.observe(report.users)
        m.batch_seconds.observe(report.seconds)
        for outcome, n in report.outcomes.items():
            m.users.labels(outcome=outcome).inc(n)
        for what, n in self.items.counts.items():
            m.items.labels(outcome=what).inc(n)
        with self._totals_lock:
            self.totals.update(self.items.counts)
            self.items.counts.clear()
            self.totals.update(report.outcomes)
            self.totals["batches"] += 1

    def stop(self) -> None:
        """Ask ``run`` to return after the batch in hand."""
        self.stop_event.set()

    def close(self) -> None:
        """Release the Redis connections."""
        self.client.close()

    def run(self, idle_exit_s: float | None = None) -> None:
        """Loop until ``stop()`` (or ``idle_exit_s`` seconds without a batch); the batch in
        hand is always finished first. The text view runs in a thread of its own
        (``_text_loop``), so a transformer pass over feature texts never delays a claim."""
        stop = self.stop_event
        idle_s = self.cfg.idle_poll_ms / 1000
        backoff = 0.5
        idle_since = time.monotonic()
        text_stop = threading.Event()
        thread = None
        if "text" in self.views:
            thread = threading.Thread(target=self._text_loop, args=(text_stop,),
                                      name="text-view", daemon=True)
            thread.start()
        try:
            self._loop(stop, idle_s, backoff, idle_since, idle_exit_s)
        finally:
            text_stop.set()
            if thread is not None:
                thread.join(timeout=max(30.0, self.cfg.lease_s))

    def _text_loop(self, stop: threading.Event) -> None:
        """Embed due feature texts until ``stop``; idle polls when none is due, and after a
        batch that took ``t`` waits ``t · (1 / text_cpu_share − 1)``."""
        share = self.cfg.text_cpu_share
        while not stop.is_set():
            try:
                t0 = time.monotonic()
                n = self.text_step()
            except (redis.RedisError, InfraError) as exc:
                log.warning("text view: Redis refused a batch (%s); retrying in 1s",
                            str(exc).splitlines()[0])
                stop.wait(1.0)
                continue
            if n:
                self._text_at = time.monotonic()
                stop.wait((self._text_at - t0) * (1 / share - 1))
            else:
                stop.wait(self.cfg.idle_poll_ms / 1000)

    def _loop(self, stop: threading.Event, idle_s: float, backoff: float, idle_since: float,
              idle_exit_s: float | None) -> None:
        while not stop.is_set():
            try:
                result = self.step()
                texts = self._text_at > idle_since
                self.watch.update_depth()
                backoff = 0.5
                self.problem = None
            except (redis.RedisError, InfraError) as exc:  # unreachable, OOM, READONLY, ...
                self.problem = f"Redis refused the last batch: {str(exc).splitlines()[0]}"
                self.metrics.redis_errors.inc()
                log.warning("%s; retrying in %.1fs", self.problem, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if texts:
                idle_since = self._text_at
            if isinstance(result, BatchReport):
                idle_since = time.monotonic()
                log.debug("batch: %d users, %.3fs", result.users, result.seconds)
                if result.seconds > self.cfg.lease_s / 2:
                    log.warning("a batch took %.1fs, over half the %.0fs lease: lower "
                                "encoder.claim_batch or raise encoder.lease_s",
                                result.seconds, self.cfg.lease_s)
            elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break
            elif result.wait_ms >= 0:
                stop.wait(min(max(result.wait_ms, 1) / 1000, idle_s))
            else:
                stop.wait(idle_s)

    def health(self) -> None:
        """The worker's own ``/healthz`` check: raises while its batches fail on Redis
        (e.g. OOM or READONLY, which a PING does not show)."""
        if self.problem:
            raise InfraError(self.problem)

    def summary(self) -> str:
        t = self.totals
        users = sum(t[k] for k in ("vector", "unchanged", "no_vector", "missing_text"))
        return (f"worker {self.worker_id}: {users} users in {t['batches']} batches "
                f"({t['vector']} new vectors, {t['unchanged']} unchanged, "
                f"{t['no_vector']} without a vector), {t['item_embedded']} items embedded "
                f"({t['item_no_text']} without text, "
                f"{t['item_rejected_nan'] + t['item_rejected_zero']} rejected), "
                f"{t['texts_encoded']} feature texts embedded, {t['lost_claim']} lost claims")


def current_text(views: dict[ViewName, np.ndarray | None]) -> bool:
    return views.get("text") is not None


_EMB_READ = ("model_version", "vec_hash", "text_hash", "text_model", "text_ms", "text_vec")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
