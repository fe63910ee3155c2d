"""The encoder worker: claim dirty users, embed their feature texts, hand them on.

One micro-batch: claim up to ``claim_batch`` users (size or max-wait trigger, see
``claims``), read their texts and current embeddings, reuse the vector when the text is
unchanged, dedupe identical texts, look the rest up in the text cache (which admits a
vector once its text recurs, see ``cache``), run the model on the misses only, write each
user's embedding (fenced), then complete the claims — which appends one ``embedded``
stream entry per user for the segmenter. Any number of workers
can run side by side; a killed worker's claims return to the queue when their lease ends.

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
from segstream.config import Settings
from segstream.encoding import Encoder, text_hash, vec_to_bytes
from segstream.errors import InfraError
from segstream.keys import Keys
from segstream.redis_io import check_redis, redis_client
from segstream.stream_entry import EmbeddedEntry
from segstream_services.encoder.cache import EmbeddingCache
from segstream_services.encoder.claims import Claim, ClaimQueue
from segstream_services.encoder.metrics import EncoderMetrics

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
        self.cfg = settings.encoder
        self.keys = Keys(settings.redis.key_prefix)
        self.client = client or redis_client(settings.redis)
        check_redis(self.client)
        self.encoder = encoder or Encoder.from_settings(self.cfg)
        self.worker_id = worker_id or new_worker_id()
        self.queue = ClaimQueue(self.client, self.keys, self.worker_id)
        self.cache = (EmbeddingCache(self.client, self.keys, self.encoder.model_version,
                                     self.cfg.cache_ttl_s) if self.cfg.cache_enabled else None)
        self.metrics = metrics or EncoderMetrics()
        self.metrics.set_device(str(self.encoder.device), self.encoder.dtype_name,
                                self.encoder.model_version)
        self.totals: Counter[str] = Counter()
        self._depth_at = 0.0
        self._stream_at = 0.0
        self._stream_len = 0
        self._full = False
        self.stop_event = threading.Event()
        from segstream_services.rollout.registry import ModelWatcher

        self.problem: str | None = None
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
        self.metrics.device.clear()
        self.metrics.set_device(str(encoder.device), encoder.dtype_name, encoder.model_version)

    def step(self) -> BatchReport | Claim:
        """Try one claim; process it if it got users. Returns the report, or the empty
        claim (with its wait hint) when no trigger fired."""
        self.watcher.check(self)
        if self.stream_full():
            return Claim(0, "", wait_ms=self.cfg.idle_poll_ms)
        crashpoints.reached("encoder", 1)
        claim = self.queue.claim(self.cfg.claim_batch, self.cfg.max_wait_ms,
                                 int(self.cfg.lease_s * 1000))
        if claim.reclaimed:
            self.metrics.reclaimed.inc(claim.reclaimed)
            log.info("returned %d expired claims to the queue", claim.reclaimed)
        if not claim.users:
            return claim
        return self.process(claim)

    def process(self, claim: Claim) -> BatchReport:
        """Embed the claimed users, store them and complete the claim."""
        started = time.perf_counter()
        report = BatchReport(users=len(claim.users))
        uids = [uid for uid, _ in claim.users]
        pipe = self.client.pipeline(transaction=False)
        for uid in uids:
            pipe.get(self.keys.text(uid))
            pipe.hmget(self.keys.emb(uid), "model_version", "text_hash")
        replies = pipe.execute()
        version = self.encoder.model_version
        hashes: dict[str, str] = {}  # uid → text hash, for users whose vector we store
        texts: dict[str, str] = {}  # text hash → text, distinct texts needing a vector
        done: list[EmbeddedEntry] = []
        no_text: list[str] = []
        for i, (uid, dirty_ms) in enumerate(claim.users):
            raw, (old_version, old_hash) = replies[2 * i], replies[2 * i + 1]
            if raw is None:
                report.outcomes["missing_text"] += 1
                no_text.append(uid)
                continue
            text = raw.decode("utf-8", errors="replace")
            thash = text_hash(text)
            if old_version == version.encode() and old_hash == thash.encode():
                report.outcomes["unchanged"] += 1
                done.append(EmbeddedEntry(uid, version, thash, dirty_ms, _now_ms()))
                continue
            hashes[uid] = thash
            texts.setdefault(thash, text)
        vectors = self._vectors(texts, Counter(hashes.values()), report)
        encoded_ms = _now_ms()
        rows = [(uid, vec_to_bytes(vectors[h]), version, h, encoded_ms)
                for uid, h in hashes.items()]
        crashpoints.reached("encoder", 2)
        stale = self.queue.write_embeddings(claim.fence, rows) if rows else 0
        if stale:
            self.metrics.stale_writes.inc(stale)
        marks = dict(claim.users)
        done += [EmbeddedEntry(uid, version, h, marks[uid], encoded_ms)
                 for uid, h in hashes.items()]
        report.outcomes["cache"] += len(hashes) - report.texts_encoded
        report.outcomes["encoded"] += report.texts_encoded
        crashpoints.reached("encoder", 3)
        appended, lost = self.queue.complete(claim.token, done, no_text)
        self._stream_len += appended  # counted until the next XLEN (see ``stream_full``)
        if lost:
            report.outcomes["lost_claim"] += lost
            log.warning("%d claims expired before completion (lease_s=%.0f too short?)",
                        lost, self.cfg.lease_s)
        report.seconds = time.perf_counter() - started
        self._account(report)
        return report

    def _vectors(self, texts: dict[str, str], users: Counter[str], report: BatchReport
                 ) -> dict[str, np.ndarray]:
        found = self.cache.get_many(list(texts)) if self.cache else {}
        missing = [h for h in texts if h not in found]
        if missing:
            t0 = time.perf_counter()
            encoded = self.encoder.encode([texts[h] for h in missing])
            self.metrics.encode_seconds.observe(time.perf_counter() - t0)
            fresh = dict(zip(missing, encoded, strict=True))
            if self.cache:
                self.cache.put_many(fresh, users)
            found.update(fresh)
        report.texts_encoded = len(missing)
        return found

    def _account(self, report: BatchReport) -> None:
        m = self.metrics
        m.batch_size.observe(report.users)
        m.batch_seconds.observe(report.seconds)
        m.texts_encoded.inc(report.texts_encoded)
        m.cache_hits.inc(report.outcomes["cache"])
        m.cache_misses.inc(report.outcomes["encoded"])
        for outcome, n in report.outcomes.items():
            m.users.labels(outcome=outcome).inc(n)
        self.totals.update(report.outcomes)
        self.totals["batches"] += 1
        self.totals["texts_encoded"] += report.texts_encoded

    def stream_full(self, every_s: float = 1.0) -> bool:
        """Back-pressure: True while the ``embedded`` stream holds ``stream_maxlen`` entries
        or more (looked up at most once per ``every_s``); the worker then claims nothing
        and users wait, coalesced, in the dirty queue until the segmenter catches up."""
        if time.monotonic() - self._stream_at >= every_s:
            self._stream_at = time.monotonic()
            self._stream_len = self.queue.stream_length()
        n = self._stream_len  # plus what this worker appended since
        self.metrics.stream_entries.set(n)
        full = n >= self.cfg.stream_maxlen
        if full and not self._full:
            log.warning("the embedded stream holds %d entries (encoder.stream_maxlen=%d): "
                        "not claiming until the segmenter catches up", n,
                        self.cfg.stream_maxlen)
        self._full = full
        self.metrics.backpressure.set(int(full))
        return full

    def update_depth(self, every_s: float = 1.0) -> None:
        """Refresh the queue-depth gauges (at most once per ``every_s``)."""
        if time.monotonic() - self._depth_at < every_s:
            return
        self._depth_at = time.monotonic()
        dirty, claimed, age = self.queue.depth()
        self.metrics.queue_depth.labels(queue="dirty").set(dirty)
        self.metrics.queue_depth.labels(queue="claimed").set(claimed)
        self.metrics.oldest_dirty_age.set(age)

    def stop(self) -> None:
        """Ask ``run`` to return after the batch in hand."""
        self.stop_event.set()

    def close(self) -> None:
        """Release the Redis connections."""
        self.client.close()

    def run(self, idle_exit_s: float | None = None) -> None:
        """Loop until ``stop()`` (or ``idle_exit_s`` seconds without a batch); the batch in
        hand is always finished first."""
        stop = self.stop_event
        idle_s = self.cfg.idle_poll_ms / 1000
        backoff = 0.5
        idle_since = time.monotonic()
        while not stop.is_set():
            try:
                result = self.step()
                self.update_depth()
                backoff = 0.5
                self.problem = None
            except (redis.RedisError, InfraError) as exc:  # unreachable, OOM, READONLY, ...
                self.problem = f"Redis refused the last batch: {str(exc).splitlines()[0]}"
                self.metrics.redis_errors.inc()
                log.warning("%s; retrying in %.1fs", self.problem, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if isinstance(result, BatchReport):
                idle_since = time.monotonic()
                log.debug("batch: %d users, %d encoded, %.3fs", result.users,
                          result.texts_encoded, result.seconds)
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
        users = sum(t[k] for k in ("encoded", "cache", "unchanged", "missing_text"))
        hits = t["cache"]
        lookups = hits + t["encoded"]
        rate = f"{hits / lookups:.1%}" if lookups else "n/a"
        return (f"worker {self.worker_id}: {users} users in {t['batches']} batches, "
                f"{t['texts_encoded']} texts encoded, cache hit rate {rate}, "
                f"{t['unchanged']} unchanged, {t['missing_text']} without text, "
                f"{t['lost_claim']} lost claims")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
