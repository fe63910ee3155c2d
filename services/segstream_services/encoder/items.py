"""Item vectors: each item's text embedded once per model version, in micro-batches.

Ingest (and ``segstream items load``) write an item's title, category and description
(``Keys.item``) and queue it (``Keys.items_dirty``). ``ItemVectors`` embeds queued items
(``drain``, before any user claim, so a new item is usually embedded within one encoder
loop of its first sight), and embeds on demand any item a user batch needs that has a
text but no vector yet (the queue lost it, or a new model version), so a user's vector
never waits for a later batch. Vectors are stored under ``Keys.item_vec(model, item)``
(float16; an empty value marks an item whose embedding was NaN or zero, counted and
never retried under that model) and kept in a bounded in-process cache.

The catalogue centre (``interest.center_items``: the mean unit item vector, subtracted
before aggregation) is kept per model version in ``Keys.item_center(model)``: each worker
writes its own field (count + float64 sum of the items it embedded first — ``SET NX``
decides who), so workers never race on it; a reader sums the fields. The centre moves as
new items arrive; a user's vector uses the centre read at its batch (refreshed at most
every ``CENTER_REFRESH_S``).

Under a model directory with item factors (``segstream.item_factors``) the vectors
returned are ``text ⊕ weight · factor`` (an item with only a factor counts too); texts'
vectors and the centre are stored under the encoder's ``text_version``, so a new factor
table re-embeds nothing, and the centre (of the text part) is padded with zeros.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import cast

import numpy as np
import redis

from segstream.config import Settings
from segstream.encoding import Encoder, vec_from_bytes, vec_to_bytes
from segstream.interest import item_text, vector_problem
from segstream.keys import Keys

log = logging.getLogger(__name__)
CENTER_REFRESH_S = 1.0
NO_TEXT_RETRY_S = 30.0  # an item without text is looked up again after this long


class ItemVectors:
    """The item vectors of one model version, as a worker sees them."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, encoder: Encoder,
                 worker_id: str, on_encode: Callable[[float], None] | None = None) -> None:
        self.client = client
        self.on_encode = on_encode  # told the model seconds of each item micro-batch
        self.keys = keys
        self.cfg = settings.encoder
        self.interest = settings.interest
        self.encoder = encoder
        self.version = encoder.text_version  # what the stored text vectors depend on
        self.factors = encoder.item_factors
        self.worker_id = worker_id
        self.counts: Counter[str] = Counter()
        self._cache: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._no_text: dict[str, float] = {}  # item → when it was found without text
        self._sum: np.ndarray | None = None  # this worker's share of the centre
        self._n = 0
        self._center: np.ndarray | None = None
        self._center_at = 0.0
        self._composed: dict[str, np.ndarray] = {}  # item → text ⊕ factor, items with text

    # ------------------------------------------------------------------ reading
    def vectors(self, items: Iterable[str]) -> dict[str, np.ndarray]:
        """The vectors of ``items`` that have one (embedding those that have a text but no
        vector yet): unit text vectors, or ``text ⊕ weight · factor`` under item factors;
        items without a usable vector are left out and counted."""
        if self.factors is None:
            return self.text_vectors(items)
        wanted = list(items)
        text = self.text_vectors(wanted)
        out: dict[str, np.ndarray] = {}
        fresh: list[str] = []
        for item in wanted:
            vec = self._composed.get(item) if item in text else None
            if vec is None:
                fresh.append(item)
            else:
                out[item] = vec
        if fresh:
            made = self.factors.compose(fresh, text, self.encoder.dim)
            out.update(made)
            if len(self._composed) + len(made) > max(self.cfg.item_cache, len(made)):
                self._composed.clear()  # bounded like the text cache, rebuilt on demand
            self._composed.update((i, v) for i, v in made.items() if i in text)
        return out

    def text_vectors(self, items: Iterable[str]) -> dict[str, np.ndarray]:
        """The unit text vectors of ``items`` that have one."""
        out: dict[str, np.ndarray] = {}
        misses: list[str] = []
        cache = self._cache
        for item in items:
            if item in cache:
                vec = cache[item]
                cache.move_to_end(item)
                if vec is not None:
                    out[item] = vec
            else:
                misses.append(item)
        if misses:
            out.update(self._load(misses))
        return out

    def _load(self, items: list[str]) -> dict[str, np.ndarray]:
        now = time.monotonic()
        items = [i for i in items if now - self._no_text.get(i, -1e9) > NO_TEXT_RETRY_S]
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.get(self.keys.item_vec(self.version, item))
        out: dict[str, np.ndarray] = {}
        missing = []
        for item, raw in zip(items, pipe.execute(), strict=True):
            if raw is None:
                missing.append(item)
            elif raw:
                out[item] = self._remember(item, vec_from_bytes(raw))
            else:
                self._remember(item, None)  # rejected under this model
        if missing:
            out.update(self.embed(missing))
        return out

    def _remember(self, item: str, vec: np.ndarray | None) -> np.ndarray:
        if vec is not None:
            vec = vec / np.linalg.norm(vec)
        if self.cfg.item_cache:
            self._cache[item] = vec
            if len(self._cache) > self.cfg.item_cache:
                self._cache.popitem(last=False)
        return vec  # type: ignore[return-value]

    # ------------------------------------------------------------------ embedding
    def drain(self, limit: int | None = None) -> int:
        """Embed queued items (oldest first, up to ``limit``, default ``item_batch``);
        returns how many were taken off the queue."""
        popped = cast(list[tuple[bytes, float]], self.client.zpopmin(
            self.keys.items_dirty(), limit or self.cfg.item_batch))
        items = [i.decode() for i, _ in popped]
        if items:
            self._no_text.clear()  # new texts may have arrived with the queued items
            self.text_vectors(items)
        return len(items)

    def embed(self, items: list[str]) -> dict[str, np.ndarray]:
        """Embed items that have no vector under this model yet (texts read from
        ``Keys.item``); returns the usable vectors, counts the rest."""
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hmget(self.keys.item(item), ["title", "category", "description"])
        texts: dict[str, str] = {}
        now = time.monotonic()
        for item, fields in zip(items, pipe.execute(), strict=True):
            title, category, description = (f.decode() if f else None for f in fields)
            text = item_text(title, category, description, self.interest.item_text_chars)
            if text is None:
                self.counts["item_no_text"] += 1
                self._no_text[item] = now
            else:
                texts[item] = text
        out: dict[str, np.ndarray] = {}
        names = list(texts)
        step = self.cfg.item_batch
        for start in range(0, len(names), step):
            chunk = names[start:start + step]
            t0 = time.perf_counter()
            encoded = self.encoder.encode([texts[i] for i in chunk])
            if self.on_encode is not None:
                self.on_encode(time.perf_counter() - t0)
            out.update(self._store(chunk, encoded))
        return out

    def _store(self, items: list[str], encoded: np.ndarray) -> dict[str, np.ndarray]:
        pipe = self.client.pipeline(transaction=False)
        good: dict[str, np.ndarray] = {}
        for item, vec in zip(items, encoded, strict=True):
            problem = vector_problem(vec)
            if problem is None:
                good[item] = np.asarray(vec, dtype=np.float32)
                pipe.set(self.keys.item_vec(self.version, item), vec_to_bytes(vec), nx=True)
            else:
                self.counts[f"item_rejected_{problem}"] += 1
                log.warning("item %r: its embedding is %s; left out of interest vectors",
                            item, problem)
                pipe.set(self.keys.item_vec(self.version, item), b"", nx=True)
                self._remember(item, None)
        created = pipe.execute()
        out: dict[str, np.ndarray] = {}
        firsts = []
        for item, was_new in zip(items, created, strict=True):
            if item in good:
                # stored: what this worker (or a faster one) wrote, read back as stored
                stored = vec_from_bytes(vec_to_bytes(good[item]))
                out[item] = self._remember(item, stored)
                if was_new:
                    firsts.append(out[item])
        self.counts["item_embedded"] += len(firsts)
        if firsts:
            self._add_to_center(firsts)
        return out

    # ------------------------------------------------------------------ centre
    def _add_to_center(self, vectors: list[np.ndarray]) -> None:
        total = np.sum(np.asarray(vectors, dtype=np.float64), axis=0)
        self._sum = total if self._sum is None else self._sum + total
        self._n += len(vectors)
        blob = struct.pack("<q", self._n) + self._sum.astype("<f8").tobytes()
        self.client.hset(self.keys.item_center(self.version), self.worker_id, blob)
        self._center_at = 0.0  # read the new centre at the next batch

    def center(self) -> np.ndarray | None:
        """The catalogue centre under this model (None: off, or no item yet)."""
        if not self.interest.center_items:
            return None
        if time.monotonic() - self._center_at < CENTER_REFRESH_S:
            return self._center
        self._center_at = time.monotonic()
        self._center = self.read_center()
        return self._center

    def read_center(self) -> np.ndarray | None:
        """The centre read now, as long as the item vectors (zeros over a factor part)."""
        center = read_center(self.client, self.keys, self.version)
        if center is None or self.factors is None:
            return center
        return np.concatenate([center, np.zeros(self.factors.dim)])


def read_center(client: redis.Redis, keys: Keys, model_version: str) -> np.ndarray | None:
    """The mean unit item vector under ``model_version`` over every worker's share."""
    total, n = None, 0
    for blob in cast(list[bytes], client.hvals(keys.item_center(model_version))):
        count = struct.unpack("<q", blob[:8])[0]
        vec = np.frombuffer(blob[8:], dtype="<f8")
        total = vec.copy() if total is None else total + vec
        n += count
    return None if total is None or n == 0 else total / n
